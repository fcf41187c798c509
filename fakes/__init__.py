"""Local stand-ins for what lies outside the system (WeChat), speaking the real protocols."""
