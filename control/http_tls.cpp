#include "control/http_tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "control/log_ring.h"

namespace meshlane {

namespace {

// The reason of the oldest queued OpenSSL error (the one that says what went wrong first),
// and the queue emptied so that it cannot be blamed on a later call.
std::string openssl_reason() {
  std::string reason;
  for (unsigned long e; (e = ERR_get_error()) != 0;) {
    if (!reason.empty()) continue;
    const char* text = ERR_reason_error_string(e);
    reason = text ? text : "OpenSSL error " + std::to_string(e);
  }
  return reason.empty() ? "unknown OpenSSL error" : reason;
}

// Readable at all: OpenSSL's own message for a missing file is less direct than errno's.
std::string unreadable(const char* what, const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) return std::string("cannot read ") + what + " " + path + ": " + std::strerror(errno);
  std::fclose(file);
  return "";
}

}  // namespace

http_tls_context::http_tls_context(std::string certificate_file, std::string key_file,
                                   log_ring* log)
    : certificate_file_(std::move(certificate_file)),
      key_file_(std::move(key_file)),
      log_(log),
      changes_({certificate_file_, key_file_}) {}

http_tls_context::~http_tls_context() {
  SSL_CTX_free(context_);
}

std::unique_ptr<http_tls_context> http_tls_context::load(const std::string& certificate_file,
                                                         const std::string& key_file, log_ring* log,
                                                         std::string& error) {
  std::unique_ptr<http_tls_context> tls(new http_tls_context(certificate_file, key_file, log));
  tls->context_ = tls->build(error, tls->fingerprint_, tls->subject_);
  if (!tls->context_) return nullptr;
  return tls;
}

SSL_CTX* http_tls_context::build(std::string& error, std::string& fingerprint,
                                 std::string& subject) const {
  error = unreadable("certificate file", certificate_file_);
  if (error.empty()) error = unreadable("key file", key_file_);
  if (!error.empty()) return nullptr;
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    error = "cannot make a TLS context: " + openssl_reason();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  // TLS 1.2 suites: ephemeral key exchange and AEAD only (RFC 9325 section 4.2).
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  // An encrypted key would otherwise make OpenSSL ask for its passphrase on the terminal,
  // stalling the agent (or its reload) on a read from stdin.
  SSL_CTX_set_default_passwd_cb(ctx, [](char*, int, int, void*) { return 0; });
  if (SSL_CTX_use_certificate_chain_file(ctx, certificate_file_.c_str()) != 1) {
    error =
        "certificate file " + certificate_file_ + ": no PEM certificate (" + openssl_reason() + ")";
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key_file_.c_str(), SSL_FILETYPE_PEM) != 1) {
    const std::string reason = openssl_reason();
    error =
        reason.find("mismatch") != std::string::npos
            ? "key file " + key_file_ + " is not the key of the certificate in " + certificate_file_
            : "key file " + key_file_ + ": no unencrypted PEM private key (" + reason + ")";
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    error = "key file " + key_file_ + " is not the key of the certificate in " + certificate_file_ +
            " (" + openssl_reason() + ")";
  }
  if (!error.empty()) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  X509* certificate = SSL_CTX_get0_certificate(ctx);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_length = 0;
  X509_digest(certificate, EVP_sha256(), md, &md_length);
  fingerprint.clear();
  for (unsigned int i = 0; i < md_length; ++i) {
    char hex[3];
    std::snprintf(hex, sizeof hex, "%02x", md[i]);
    fingerprint += hex;
  }
  char name[512];
  X509_NAME_oneline(X509_get_subject_name(certificate), name, sizeof name);
  subject = name;
  // Served all the same: clients decide, and refusing to start would take the probes down.
  if (X509_cmp_current_time(X509_get0_notAfter(certificate)) < 0 && log_)
    log_->write(log_level::warn, "https: the certificate in " + certificate_file_ + " has expired");
  return ctx;
}

SSL_CTX* http_tls_context::context() {
  if (changes_.changed()) {
    changes_.remember();
    std::string error, fingerprint, subject;
    if (SSL_CTX* fresh = build(error, fingerprint, subject)) {
      SSL_CTX_free(context_);
      context_ = fresh;
      fingerprint_ = fingerprint;
      subject_ = subject;
      if (log_)
        log_->write(log_level::info,
                    "https: certificate re-read: " + subject_ + ", sha256 " + fingerprint_);
    } else if (log_) {
      log_->write(log_level::error, "https: " + error + "; the certificate loaded before stays");
    }
  }
  return context_;
}

tls_session::tls_session(SSL_CTX* context, int fd) : ssl_(SSL_new(context)) {
  if (!ssl_) return;
  SSL_set_fd(ssl_, fd);
  SSL_set_accept_state(ssl_);
}

tls_session::~tls_session() {
  SSL_free(ssl_);
}

tls_session::result tls_session::step(int returned) {
  const int code = SSL_get_error(ssl_, returned);
  switch (code) {
    case SSL_ERROR_WANT_READ:
      wants_ = POLLIN;
      return result::again;
    case SSL_ERROR_WANT_WRITE:
      wants_ = POLLOUT;
      return result::again;
    case SSL_ERROR_ZERO_RETURN:
      ERR_clear_error();
      return result::closed;
    case SSL_ERROR_SYSCALL:
      error_ = ERR_peek_error() ? openssl_reason() : errno ? std::strerror(errno) : "end of stream";
      ERR_clear_error();
      return result::failed;
    default:
      error_ = openssl_reason();
      return result::failed;
  }
}

tls_session::result tls_session::handshake() {
  if (!ssl_) {
    error_ = "SSL_new failed";
    return result::failed;
  }
  // SSL_get_error reads the thread's error queue: it must hold nothing from before.
  ERR_clear_error();
  errno = 0;
  const int returned = SSL_do_handshake(ssl_);
  return returned == 1 ? result::done : step(returned);
}

tls_session::result tls_session::read(std::string& into, size_t limit) {
  bool got = false;
  while (into.size() < limit) {
    char buffer[8192];
    ERR_clear_error();
    errno = 0;
    const int n =
        SSL_read(ssl_, buffer, static_cast<int>(std::min(sizeof buffer, limit - into.size())));
    if (n > 0) {
      into.append(buffer, static_cast<size_t>(n));
      got = true;
      continue;
    }
    const result r = step(n);
    // What arrived before the peer closed (or broke off) is still a request to answer; the
    // next call reports the end again.
    return got ? result::done : r;
  }
  return result::done;
}

tls_session::result tls_session::write(std::string_view data, size_t& written) {
  while (written < data.size()) {
    ERR_clear_error();
    errno = 0;
    const int n = SSL_write(ssl_, data.data() + written,
                            static_cast<int>(std::min<size_t>(data.size() - written, 1 << 20)));
    if (n <= 0) return step(n);
    written += static_cast<size_t>(n);
  }
  return result::done;
}

void tls_session::close_notify() {
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

}  // namespace meshlane
