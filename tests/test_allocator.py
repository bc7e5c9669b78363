"""A process that serves generations keeps the pages of a freed picture for the next one."""

import os
import subprocess
import sys
from pathlib import Path

from visionary.allocator import keep_freed_pages

ROOT = Path(__file__).resolve().parent.parent
GENERATIONS = 20
PAGES_PER_GENERATION = (2_000_000 + 2_000_000 + 1_500_000) // 4096

# The buffers of a generation: the model's answer, its base64 text, the picture.
# Prints how many pages the process faulted in over GENERATIONS of them.
FAULTS_OVER_GENERATIONS = f"""
import resource, sys
from visionary.allocator import keep_freed_pages

if sys.argv[1] == "tuned":
    assert keep_freed_pages()
elif sys.argv[1] == "app":  # what the app does when it first draws
    from visionary import clients
    clients.current().images

def generation():
    answer = b"A" * 2_000_000
    text = answer.decode("ascii")
    picture = answer[:1_500_000]
    return len(text) + len(picture)

generation()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({GENERATIONS}):
    generation()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    environ.pop("GLIBC_TUNABLES", None)
    environ["VISIONARY_PROVIDER"] = "offline"
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OVER_GENERATIONS, mode],
        cwd=ROOT, env=environ, capture_output=True, text=True, check=True,
    )
    return int(done.stdout)


def test_freed_pictures_leave_their_pages_for_the_next():
    untuned, tuned = faults("plain"), faults("tuned")
    # By default glibc hands each picture's megabytes back and faults them in again.
    assert untuned > GENERATIONS * PAGES_PER_GENERATION // 2
    assert tuned < GENERATIONS * PAGES_PER_GENERATION // 20, (tuned, untuned)


def test_the_app_keeps_them_once_it_has_drawn():
    assert faults("app") < GENERATIONS * PAGES_PER_GENERATION // 20


def test_an_operators_own_malloc_tuning_wins():
    assert keep_freed_pages({"MALLOC_ARENA_MAX": "2"}) is False
    assert keep_freed_pages({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}) is False


def test_a_python_without_ctypes_draws_untuned(monkeypatch):
    monkeypatch.setitem(sys.modules, "ctypes", None)  # `import ctypes` now raises ImportError
    assert keep_freed_pages({}) is False
