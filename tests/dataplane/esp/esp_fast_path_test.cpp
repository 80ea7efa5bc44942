// The packet path allocates nothing and takes no lock (DESIGN.md: no heap, no locks per
// packet), OpenSSL's part included. malloc, calloc, realloc and the pthread lock
// functions are interposed here (an executable's definitions take precedence for every
// library it loads; glibc's own functions do the work) and count their calls on the
// test's thread while it looks.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include "tests/dataplane/esp/esp_test_support.h"

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* pointer, size_t size);
}

namespace {
thread_local bool counting = false;
thread_local uint64_t allocations = 0, locks = 0;

// glibc's function of that name, found on first use (no function-static guard: the
// guard itself may lock).
template <typename F>
F next(F& cache, const char* name) {
  if (!cache) cache = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
  return cache;
}
int (*next_mutex_lock)(pthread_mutex_t*) = nullptr;
int (*next_rdlock)(pthread_rwlock_t*) = nullptr;
int (*next_wrlock)(pthread_rwlock_t*) = nullptr;
}  // namespace

extern "C" {
void* malloc(size_t size) {
  if (counting) ++allocations;
  return __libc_malloc(size);
}
void* calloc(size_t count, size_t size) {
  if (counting) ++allocations;
  return __libc_calloc(count, size);
}
void* realloc(void* pointer, size_t size) {
  if (counting) ++allocations;
  return __libc_realloc(pointer, size);
}
int pthread_mutex_lock(pthread_mutex_t* mutex) {
  if (counting) ++locks;
  return next(next_mutex_lock, "pthread_mutex_lock")(mutex);
}
int pthread_rwlock_rdlock(pthread_rwlock_t* lock) {
  if (counting) ++locks;
  return next(next_rdlock, "pthread_rwlock_rdlock")(lock);
}
int pthread_rwlock_wrlock(pthread_rwlock_t* lock) {
  if (counting) ++locks;
  return next(next_wrlock, "pthread_rwlock_wrlock")(lock);
}
}

namespace meshlane::testing {
namespace {

TEST(esp_fast_path, allocates_nothing_and_locks_nothing_per_packet) {
  // The interposition works: a counted malloc and a counted lock are seen. (Called
  // through a volatile pointer: a compiler may drop a malloc whose memory goes unused.)
  void* (*volatile allocate)(size_t) = std::malloc;
  counting = true;
  void* probe = allocate(16);
  pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&mutex);
  counting = false;
  pthread_mutex_unlock(&mutex);
  std::free(probe);
  ASSERT_EQ(allocations, 1u);
  ASSERT_EQ(locks, 1u);
  allocations = locks = 0;

  for (const auto& [engine, key_length] :
       {std::pair{kEngines.front(), 16u}, std::pair{kEngines.front(), 32u},
        std::pair{kEngines.back(), 16u}, std::pair{kEngines.back(), 32u}}) {
    SCOPED_TRACE(engine_name(engine) + " " + std::to_string(key_length));
    const bytes key = test_key(key_length);
    outbound_sa out;
    inbound_sa_table in(test_ciphers(engine), 4);
    ASSERT_EQ(out.install(test_ciphers(engine), sa_params(key, kSpi, kNode2)), "");
    ASSERT_EQ(in.install(sa_params(key, kSpi, kNode1)), "");
    const bytes geneve = geneve_frame(inner_frame(512));
    // A packet already accepted, to replay inside the counted part.
    mbuf_ptr first(to_mbuf(geneve));
    ASSERT_EQ(esp_encapsulate(out, first.get()), esp_encap_result::ok);
    mbuf_ptr replayed(to_mbuf(from_mbuf(first.get())));
    parsed_packet outer = parse(from_mbuf(first.get()));
    const parsed_packet replayed_outer = outer;
    ASSERT_EQ(esp_decapsulate(in, first.get(), outer), esp_result::ok);

    mbuf_ptr m(to_mbuf(geneve));
    ASSERT_TRUE(m && replayed);
    constexpr unsigned kPackets = 2000;
    unsigned ok = 0, forged = 0, replays = 0;
    counting = true;
    for (unsigned i = 0; i < kPackets; ++i) {
      ok += esp_encapsulate(out, m.get()) == esp_encap_result::ok;
      parse_packet(rte_pktmbuf_mtod(m.get(), const uint8_t*), rte_pktmbuf_data_len(m.get()), outer);
      if (i % 100 == 7) {
        uint8_t* payload = rte_pktmbuf_mtod(m.get(), uint8_t*) + kPayloadAt;
        *payload ^= 1;
        forged += esp_decapsulate(in, m.get(), outer) == esp_result::auth_failed;
        *payload ^= 1;  // the decryption wrote garbage plaintext: seal the frame again
        rte_pktmbuf_reset(m.get());
        std::memcpy(rte_pktmbuf_append(m.get(), static_cast<uint16_t>(geneve.size())),
                    geneve.data(), geneve.size());
        ok += esp_encapsulate(out, m.get()) == esp_encap_result::ok;
        parse_packet(rte_pktmbuf_mtod(m.get(), const uint8_t*), rte_pktmbuf_data_len(m.get()),
                     outer);
        parsed_packet again = replayed_outer;
        replays += esp_decapsulate(in, replayed.get(), again) == esp_result::replay;
      }
      ok += esp_decapsulate(in, m.get(), outer) == esp_result::ok;
    }
    counting = false;
    EXPECT_EQ(ok, 2 * kPackets + kPackets / 100);
    EXPECT_EQ(forged, kPackets / 100);
    EXPECT_EQ(replays, kPackets / 100);
    EXPECT_EQ(allocations, 0u) << "heap allocations on the packet path";
    EXPECT_EQ(locks, 0u) << "locks taken on the packet path";
    EXPECT_EQ(from_mbuf(m.get()), geneve);
    allocations = locks = 0;
  }
}

}  // namespace
}  // namespace meshlane::testing
