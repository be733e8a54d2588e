"""Make the workspace's ``src/`` importable before any installed copy.

DVC hashes the files under ``src/`` as stage dependencies, so a stage must run exactly that
code, also in a temporary experiment or queue workspace.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
