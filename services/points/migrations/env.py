from mallkit.migrations import run_env
from points.models import Base

run_env(Base.metadata)
