"""keep_freed_memory: after it, a large block freed and allocated again is not page-faulted in again.

Runs in a subprocess, since the setting lasts for the whole process."""
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
import sam_hf  # the README's spelling: sam_hf.allocator.keep_freed_memory(); importing sam_hf changes nothing

keep_freed_memory = sam_hf.allocator.keep_freed_memory

def faults_of_second_allocation():
    torch.ones(8 * 2**20)  # 32 MiB, written then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(8 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_second_allocation()
applied = keep_freed_memory()
faults_of_second_allocation()  # the heap grows to hold it once
print(default, applied, faults_of_second_allocation())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    default, applied, kept = int(out[0]), out[1] == "True", int(out[2])
    assert applied
    assert default > 4000  # 32 MiB of fresh 4 KiB pages: glibc returned the first block to the system
    assert kept < 100
