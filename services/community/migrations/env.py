from mallkit.migrations import run_env
from community.models import Base

run_env(Base.metadata)
