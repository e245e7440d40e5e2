"""Per-process temporary folders, with real processes: a killed one's folder goes at the next
start, a live one's and anything else under the root is never touched."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from services.stack import REPO

# Claims a folder, makes a file in it through `tempfile`, prints the folder, and keeps it
# until its stdin closes.
OWNER = """
import sys, tempfile
from pathlib import Path
from services.shared.scratch import own_scratch_folder
with own_scratch_folder("owner", Path(sys.argv[1])) as folder:
    tempfile.NamedTemporaryFile(delete=False).write(b"a user's voice")
    print(folder, flush=True)
    sys.stdin.read()
"""


def _owner(root: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdout is not None
    folder = Path(process.stdout.readline().strip())
    assert folder.parent == root and str(process.pid) in folder.name
    return process, folder


def test_a_killed_processs_folder_is_removed_at_the_next_start_and_nothing_else(tmp_path):
    root = tmp_path / "scratch"
    killed, killed_folder = _owner(root)
    assert any(path.is_file() for path in killed_folder.iterdir() if path.name != ".owner.lock")
    someone_elses = root / "not-ours"
    someone_elses.mkdir()
    (someone_elses / "keep.txt").write_text("not a scratch folder")
    alive, alive_folder = _owner(root)
    assert killed_folder.exists(), "a live owner's folder was removed"

    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed_folder.exists()  # SIGKILL cleans nothing up
    third, third_folder = _owner(root)
    assert not killed_folder.exists()
    assert alive_folder.exists() and (someone_elses / "keep.txt").exists()

    for process in (alive, third):
        process.communicate("", timeout=30)  # a normal exit removes its own folder
    assert not alive_folder.exists() and not third_folder.exists()
