from community.models import Base
from mallkit.migrations import run_env

run_env(Base.metadata)
