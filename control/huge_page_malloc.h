// Transparent huge pages for the agent's large allocations.
//
// A 100,000-service apply allocates and first touches about a gigabyte within seconds: the
// read buffer of the 109 MB line, simdjson's tape and structural indexes for it, the
// validated state, the compiled tables, the kept document's DOM. With 4 KiB pages each of
// those pages is a fault; on the 2-vCPU VMs measured (a PVM guest, where a fault is slow)
// the faults were a large part of the apply. Debian's kernels run transparent huge pages in
// "madvise" mode, so a process gets 2 MiB pages only where it asks for them, and glibc asks
// for its large (mmap'd) blocks only with the tunable glibc.malloc.hugetlb=1 (glibc 2.35+),
// which is read at start: the process re-executes itself once with it set.
#pragma once

namespace meshlane {

// Re-executes the running program (its path from /proc/self/exe, the same argv) with
// GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1 unless the environment already names that
// tunable (set to 0 it opts out), this process is a re-execution already
// (MESHLANE_HUGE_PAGE_REEXEC), or it started privileged (AT_SECURE: glibc ignores tunables
// then). Call first thing in main, before threads or state. Returns only when there was
// nothing to do or the exec failed (then the process goes on as it is).
void reexec_with_huge_page_malloc(char** argv);

}  // namespace meshlane
