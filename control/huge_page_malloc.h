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
//
// Then, in the process that goes on, it limits malloc to two arenas (limit_malloc_arenas).
#pragma once

namespace meshlane {

// Re-executes the running program (its path from /proc/self/exe, the same argv) with
// GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1 unless the environment already names that
// tunable (set to 0 it opts out), this process is a re-execution already
// (MESHLANE_HUGE_PAGE_REEXEC), or it started privileged (AT_SECURE: glibc ignores tunables
// then). Call first thing in main, before threads or state. Returns only when there was
// nothing to do or the exec failed (then the process goes on as it is), after
// limit_malloc_arenas().
void reexec_with_huge_page_malloc(char** argv);

// Two malloc arenas for the whole process (mallopt M_ARENA_MAX), unless the environment
// names a count (glibc.malloc.arena_max in GLIBC_TUNABLES, or MALLOC_ARENA_MAX): true when
// set. Before any thread is started. glibc gives each new thread an arena of its own, up
// to 8 per CPU, and a thread's arena grows its heap a page at a time (an mprotect and a
// fault each, outside the huge-page path). An apply's stages run on different threads
// (the socket's publish thread, the two-thread reading and Maglev helpers, the kept
// document's builder), so each stage faulted fresh pages in while another arena held
// free ones; with two arenas they reuse each other's freed memory: a 100,000-service apply
// through the socket took 0.48-0.89x the time, with less CPU and 2.2-2.7 GB peak RSS
// against 3.1 GB (perf/README.md, "Two malloc arenas"). The agent's per-packet work allocates
// nothing (DPDK mempools), so fewer arenas cost only the control threads, which seldom
// allocate at the same moment.
bool limit_malloc_arenas();

}  // namespace meshlane
