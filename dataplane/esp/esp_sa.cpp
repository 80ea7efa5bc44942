// ESP security associations: the engines' set-up, keyed cipher contexts, outbound SAs and
// the inbound SA table. The setup path (may allocate); seal and open are esp_codec.cpp's.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#ifdef MESHLANE_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

#include <bit>
#include <cstdlib>
#include <utility>

#include "dataplane/esp/esp.h"

namespace meshlane {

namespace {

// OpenSSL's reason for the last failure (never key material: OpenSSL does not put keys
// in its errors).
std::string openssl_reason(const char* what) {
  char text[256] = "unknown error";
  if (const unsigned long code = ERR_get_error()) ERR_error_string_n(code, text, sizeof text);
  ERR_clear_error();
  return std::string(what) + ": " + text;
}

std::string check_params(const esp_sa_params& params) {
  // RFC 4303 section 2.1: SPI 0 is reserved for local use (here: a free slot, and the
  // non-ESP marker of RFC 3948 on the wire), 1..255 for IANA.
  if (params.spi < 256)
    return "SPI " + std::to_string(params.spi) + " is reserved (RFC 4303 section 2.1)";
  if (params.peer_ip == 0) return "no peer address";
  if (params.key.size() != 16 && params.key.size() != 32)
    return "key of " + std::to_string(params.key.size()) + " bytes: AES-GCM takes 16 or 32";
  return "";
}

}  // namespace

// --- esp_ciphers ---

const char* to_string(esp_engine engine) {
  return engine == esp_engine::ipsec_mb ? "intel-ipsec-mb" : "openssl";
}

std::unique_ptr<esp_ciphers> esp_ciphers::fetch(std::string& error,
                                                std::optional<esp_engine> engine) {
  std::unique_ptr<esp_ciphers> ciphers(new esp_ciphers());
  if (engine != esp_engine::openssl) {
#ifdef MESHLANE_HAVE_IPSEC_MB
    IMB_MGR* manager = alloc_mb_mgr(0);
    IMB_ARCH arch = IMB_ARCH_NONE;
    if (manager) init_mb_mgr_auto(manager, &arch);
    // Without AES-NI the library falls back to AES in software, slower than OpenSSL's.
    const bool usable = manager && arch >= IMB_ARCH_SSE && (manager->features & IMB_FEATURE_AESNI);
    if (usable) {
      ciphers->engine_ = esp_engine::ipsec_mb;
      ciphers->manager_ = manager;
      return ciphers;
    }
    if (manager) free_mb_mgr(manager);
    if (engine) {
      error = "intel-ipsec-mb cannot run AES-GCM with AES-NI on this CPU";
      return nullptr;
    }
#else
    if (engine) {
      error = "built without intel-ipsec-mb";
      return nullptr;
    }
#endif
  }
  ciphers->aes128_ = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  ciphers->aes256_ = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  if (!ciphers->aes128_ || !ciphers->aes256_) {
    error = openssl_reason("OpenSSL has no AES-GCM");
    return nullptr;
  }
  return ciphers;
}

esp_ciphers::~esp_ciphers() {
  EVP_CIPHER_free(aes128_);
  EVP_CIPHER_free(aes256_);
#ifdef MESHLANE_HAVE_IPSEC_MB
  if (manager_) free_mb_mgr(manager_);
#endif
}

const EVP_CIPHER* esp_ciphers::for_key(size_t key_length) const {
  return key_length == 16 ? aes128_ : key_length == 32 ? aes256_ : nullptr;
}

// --- esp_cipher_context ---

namespace {

void free_key_data(gcm_key_data* key_data) {
#ifdef MESHLANE_HAVE_IPSEC_MB
  if (key_data) {
    OPENSSL_cleanse(key_data, sizeof(gcm_key_data));
    std::free(key_data);
  }
#else
  (void)key_data;
#endif
}

}  // namespace

esp_cipher_context::~esp_cipher_context() {
  EVP_CIPHER_CTX_free(context_);
  free_key_data(key_data_);
}

esp_cipher_context::esp_cipher_context(esp_cipher_context&& other) noexcept
    : engine_(other.engine_),
      key_length_(other.key_length_),
      keyed_(std::exchange(other.keyed_, false)),
      nonce_(other.nonce_),
      context_(std::exchange(other.context_, nullptr)),
      manager_(std::exchange(other.manager_, nullptr)),
      key_data_(std::exchange(other.key_data_, nullptr)) {
  OPENSSL_cleanse(other.nonce_.data(), other.nonce_.size());
}

esp_cipher_context& esp_cipher_context::operator=(esp_cipher_context&& other) noexcept {
  if (this != &other) {
    EVP_CIPHER_CTX_free(context_);
    free_key_data(key_data_);
    engine_ = other.engine_;
    key_length_ = other.key_length_;
    keyed_ = std::exchange(other.keyed_, false);
    nonce_ = other.nonce_;
    context_ = std::exchange(other.context_, nullptr);
    manager_ = std::exchange(other.manager_, nullptr);
    key_data_ = std::exchange(other.key_data_, nullptr);
    OPENSSL_cleanse(other.nonce_.data(), other.nonce_.size());
  }
  return *this;
}

std::string esp_cipher_context::key(const esp_ciphers& ciphers, std::span<const uint8_t> key,
                                    const std::array<uint8_t, kEspSaltSize>& salt, bool seal) {
  clear();
  if (key.size() != 16 && key.size() != 32)
    return "key of " + std::to_string(key.size()) + " bytes: AES-GCM takes 16 or 32";
  engine_ = ciphers.engine();
  key_length_ = static_cast<uint8_t>(key.size());
  if (engine_ == esp_engine::ipsec_mb) {
#ifdef MESHLANE_HAVE_IPSEC_MB
    // The round keys and the hash key's powers, expanded once; 64-byte aligned for the
    // library's aligned loads (aligned_alloc wants a size in whole alignments).
    constexpr size_t kKeyDataSize = (sizeof(gcm_key_data) + 63) & ~size_t{63};
    if (!key_data_ &&
        !(key_data_ = static_cast<gcm_key_data*>(std::aligned_alloc(64, kKeyDataSize))))
      return "no memory for the expanded key";
    manager_ = ciphers.ipsec_mb();
    if (key.size() == 16)
      IMB_AES128_GCM_PRE(manager_, key.data(), key_data_);
    else
      IMB_AES256_GCM_PRE(manager_, key.data(), key_data_);
#else
    return "built without intel-ipsec-mb";
#endif
  } else {
    const EVP_CIPHER* cipher = ciphers.for_key(key.size());
    if (!cipher) return "OpenSSL has no AES-GCM for this key";
    if (!context_ && !(context_ = EVP_CIPHER_CTX_new()))
      return openssl_reason("EVP_CIPHER_CTX_new");
    // GCM's default nonce length is 12 bytes, RFC 4106's salt | IV; the key schedule is
    // computed here once, and per packet EVP_CipherInit_ex sets only the nonce.
    if (EVP_CipherInit_ex(context_, cipher, nullptr, key.data(), nullptr, seal ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_get_iv_length(context_) != static_cast<int>(nonce_.size()))
      return openssl_reason("keying AES-GCM");
  }
  std::copy(salt.begin(), salt.end(), nonce_.begin());
  keyed_ = true;
  return "";
}

void esp_cipher_context::clear() {
  if (keyed_ && engine_ == esp_engine::openssl && context_) {
    // Re-initialising with a zero key overwrites the key schedule without freeing the
    // context (EVP_CIPHER_CTX_reset would free and later re-allocate its provider state).
    static constexpr uint8_t kZero[32] = {};
    EVP_CipherInit_ex(context_, nullptr, nullptr, kZero, nullptr, -1);
  }
#ifdef MESHLANE_HAVE_IPSEC_MB
  if (key_data_) OPENSSL_cleanse(key_data_, sizeof(gcm_key_data));
#endif
  OPENSSL_cleanse(nonce_.data(), nonce_.size());
  keyed_ = false;
}

// --- outbound_sa ---

std::string outbound_sa::install(const esp_ciphers& ciphers, const esp_sa_params& params,
                                 uint64_t limit) {
  if (std::string error = check_params(params); !error.empty()) return error;
  spi = 0;
  if (std::string error = cipher.key(ciphers, params.key, params.salt, true); !error.empty())
    return error;
  spi = params.spi;
  peer_ip = params.peer_ip;
  next_sequence = 1;
  rotate_after = limit;
  exhausted.store(false, std::memory_order_relaxed);
  packets.value.store(0, std::memory_order_relaxed);
  bytes.value.store(0, std::memory_order_relaxed);
  return "";
}

// --- inbound_sa_table ---

inbound_sa_table::inbound_sa_table(const esp_ciphers& ciphers, uint32_t max_peers)
    : ciphers_(ciphers), max_peers_(max_peers ? max_peers : 1) {
  // At most half full, so that probes stay short.
  const uint32_t slots = std::bit_ceil(2 * max_peers_);
  mask_ = slots - 1;
  shift_ = 32 - std::countr_zero(slots);  // slots >= 2: never a shift by 32
  index_.resize(slots);
  records_ = std::make_unique<peer_record[]>(max_peers_);
  free_records_.reserve(max_peers_);
  for (uint32_t i = max_peers_; i-- > 0;) free_records_.push_back(i);
}

inbound_sa_table::~inbound_sa_table() = default;

std::string inbound_sa_table::install(const esp_sa_params& params, uint32_t replay_window,
                                      uint64_t highest_received) {
  if (std::string error = check_params(params); !error.empty()) return error;
  if (replay_window < esp_replay_window::kMinSize || replay_window > esp_replay_window::kMaxSize)
    return "replay window of " + std::to_string(replay_window) + " packets: must be " +
           std::to_string(esp_replay_window::kMinSize) + ".." +
           std::to_string(esp_replay_window::kMaxSize);
  uint32_t record = find_record(params.peer_ip);
  if (record == kNone) {
    if (free_records_.empty())
      return "no room for another peer (" + std::to_string(max_peers_) + " at most)";
    record = free_records_.back();
    free_records_.pop_back();
    uint32_t i = home_of(params.peer_ip);
    while (index_[i].peer_ip != 0) i = (i + 1) & mask_;
    index_[i] = {params.peer_ip, record};
    ++peer_count_;
  }
  peer_record& r = records_[record];
  // The same SPI (re-keyed), else a free slot, else the SA installed first.
  inbound_sa* target = nullptr;
  for (inbound_sa& sa : r.sas)
    if (sa.spi == params.spi) target = &sa;
  for (inbound_sa& sa : r.sas)
    if (!target && sa.spi == 0) target = &sa;
  if (!target) target = r.sas[0].installed <= r.sas[1].installed ? &r.sas[0] : &r.sas[1];
  target->spi = 0;  // unusable until keyed
  if (std::string error = target->cipher.key(ciphers_, params.key, params.salt, false);
      !error.empty()) {
    bool any = false;
    for (const inbound_sa& sa : r.sas) any |= sa.spi != 0;
    if (!any) erase_peer(params.peer_ip);
    return error;
  }
  target->window = esp_replay_window(replay_window, highest_received);
  target->highest.value.store(highest_received, std::memory_order_relaxed);
  for (esp_counter* c :
       {&target->packets, &target->bytes, &target->auth_failures, &target->replays})
    c->value.store(0, std::memory_order_relaxed);
  target->peer_ip = params.peer_ip;
  target->installed = ++installs_;
  target->spi = params.spi;
  return "";
}

bool inbound_sa_table::remove(uint32_t peer_ip, uint32_t spi) {
  inbound_sa* sa = spi ? find(peer_ip, spi) : nullptr;
  if (!sa) return false;
  sa->spi = 0;
  sa->cipher.clear();
  const peer_record& r = records_[find_record(peer_ip)];
  bool any = false;
  for (const inbound_sa& other : r.sas) any |= other.spi != 0;
  if (!any) erase_peer(peer_ip);
  return true;
}

void inbound_sa_table::erase_peer(uint32_t peer_ip) {
  uint32_t i = home_of(peer_ip);
  while (index_[i].peer_ip != peer_ip) {
    if (index_[i].peer_ip == 0) return;
    i = (i + 1) & mask_;
  }
  free_records_.push_back(index_[i].record);
  --peer_count_;
  // Backward-shift deletion (Knuth 6.4, algorithm R): move later members of the probe
  // run into the hole unless their home lies cyclically in (hole, their slot].
  for (uint32_t j = i;;) {
    j = (j + 1) & mask_;
    if (index_[j].peer_ip == 0) break;
    const uint32_t home = home_of(index_[j].peer_ip);
    const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (stays) continue;
    index_[i] = index_[j];
    i = j;
  }
  index_[i] = {};
}

// --- names ---

const char* to_string(esp_encap_result result) {
  switch (result) {
    case esp_encap_result::ok:
      return "ok";
    case esp_encap_result::no_sa:
      return "no_sa";
    case esp_encap_result::not_linear:
      return "not_linear";
    case esp_encap_result::malformed:
      return "malformed";
    case esp_encap_result::wrong_peer:
      return "wrong_peer";
    case esp_encap_result::no_headroom:
      return "no_headroom";
    case esp_encap_result::no_tailroom:
      return "no_tailroom";
    case esp_encap_result::sequence_exhausted:
      return "sequence_exhausted";
    case esp_encap_result::cipher_failed:
      return "cipher_failed";
    case esp_encap_result::count_:
      break;
  }
  return "unknown";
}

const char* to_string(esp_result result) {
  switch (result) {
    case esp_result::ok:
      return "ok";
    case esp_result::auth_failed:
      return "auth_failed";
    case esp_result::replay:
      return "replay";
    case esp_result::no_sa:
      return "no_sa";
    case esp_result::malformed:
      return "malformed";
    case esp_result::not_esp:
      return "not_esp";
    case esp_result::count_:
      break;
  }
  return "unknown";
}

}  // namespace meshlane
