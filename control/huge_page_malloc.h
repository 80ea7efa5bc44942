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
// Then, in the process that goes on, it limits malloc to two arenas (limit_malloc_arenas)
// and has their heaps grow in large steps (pad_malloc_heaps).
#pragma once

#include <cstddef>

namespace meshlane {

// Re-executes the running program (its path from /proc/self/exe, the same argv) with
// GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1 unless the environment already names that
// tunable (set to 0 it opts out), this process is a re-execution already
// (MESHLANE_HUGE_PAGE_REEXEC), or it started privileged (AT_SECURE: glibc ignores tunables
// then). Call first thing in main, before threads or state. Returns only when there was
// nothing to do or the exec failed (then the process goes on as it is), after
// limit_malloc_arenas() and pad_malloc_heaps().
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

// What malloc adds to each heap it grows (mallopt M_TOP_PAD): a thread arena's heap (64 MiB
// at most, glibc's HEAP_MAX_SIZE) is then made readable and writable whole when it is
// created, and the main arena's break moves in steps of this size.
inline constexpr size_t kMallocTopPad = size_t{64} << 20;

// Sets kMallocTopPad (mallopt M_TOP_PAD) unless the environment names a pad
// (glibc.malloc.top_pad in GLIBC_TUNABLES, or MALLOC_TOP_PAD_): true when set. Before any
// thread is started. With its default pad (128 KiB, given a heap only when it is made),
// glibc grows a thread arena's heap by just what each allocation needs, an mprotect of the
// next pages a time: one round of the agent benchmark
// (a cold, an unchanged and a 1%-changed apply of 100,000 services) made about 31,000
// mprotect calls on the helper threads (the Maglev and reading helpers, the sinks), each a
// change of the process's mappings, and faulted every page in alone. With a
// 64 MiB pad a new thread heap is writable whole at once (one mprotect) and only faults
// remain. The cost: a heap keeps up to the pad of freed memory at its top instead of
// returning it (7-18 MB more resident in the agents measured), and setting a pad fixes glibc's mmap threshold at its 128 KiB start (it no
// longer rises after large frees), so blocks from 128 KiB up are their own mappings, which
// glibc.malloc.hugetlb=1 backs with huge pages from 2 MiB up. Cold full applies of 100,000
// services through a whole agent took 1.66-1.88 s against 2.27-2.89 s without it
// (perf/README.md, "A pad for malloc's heaps").
bool pad_malloc_heaps();

}  // namespace meshlane
