// HTTPS for the agent's HTTP surface: the server certificate and key (PEM files, as a
// Kubernetes TLS Secret or cert-manager mounts them: tls.crt with its chain, tls.key),
// re-read when either file changes, and one connection's TLS session on a non-blocking
// socket driven by the server's poll loop.
//
// TLS 1.2 at least, forward-secret AEAD suites only for TLS 1.2 (TLS 1.3's are all such),
// no renegotiation, no session resumption (one request per connection: nothing to resume).
#pragma once

#include <openssl/types.h>
#include <poll.h>

#include <memory>
#include <string>
#include <string_view>

#include "control/file_stamp.h"

namespace meshlane {

class log_ring;

class http_tls_context {
 public:
  // Loads the pair; "" in `error` or what is wrong, naming the file.
  static std::unique_ptr<http_tls_context> load(const std::string& certificate_file,
                                                const std::string& key_file, log_ring* log,
                                                std::string& error);
  ~http_tls_context();
  http_tls_context(const http_tls_context&) = delete;
  http_tls_context& operator=(const http_tls_context&) = delete;

  // The context a new connection starts from. When a file changed (looked at, at most once
  // a second), the pair is loaded again first; a pair that does not load (unreadable, not
  // PEM, key and certificate not matching, e.g. one of them replaced before the other) is
  // logged and the running one kept. Sessions hold their own reference: replacing the
  // context never disturbs a connection under way.
  SSL_CTX* context();
  // The served certificate's SHA-256 fingerprint (hex) and subject, for logs and status.
  const std::string& fingerprint() const { return fingerprint_; }
  const std::string& subject() const { return subject_; }

 private:
  http_tls_context(std::string certificate_file, std::string key_file, log_ring* log);
  // A new context from the files, or nullptr with `error` set.
  SSL_CTX* build(std::string& error, std::string& fingerprint, std::string& subject) const;

  std::string certificate_file_, key_file_;
  log_ring* log_;
  file_change_check changes_;
  SSL_CTX* context_ = nullptr;
  std::string fingerprint_, subject_;
};

// One connection's TLS on a non-blocking socket. Each call does what the socket allows
// now; on `again` the poll loop waits for wants() and calls again.
class tls_session {
 public:
  enum class result { done, again, closed, failed };

  tls_session(SSL_CTX* context, int fd);
  ~tls_session();
  tls_session(const tls_session&) = delete;
  tls_session& operator=(const tls_session&) = delete;

  result handshake();
  // Appends what has arrived to `into` (at most `limit` bytes in all): `done` when
  // something was read and nothing more is buffered, `again` when nothing was, `closed` at
  // the peer's close_notify or end of stream.
  result read(std::string& into, size_t limit);
  // Writes from `data`, adding to `written`: `done` when all of it went out.
  result write(std::string_view data, size_t& written);
  // Sends close_notify if the socket takes it now (RFC 8446 section 6.1); never waits.
  void close_notify();

  short wants() const { return wants_; }
  // Why the last call failed (OpenSSL's reason), for counters and debug logs.
  const std::string& error() const { return error_; }

 private:
  result step(int returned);
  SSL* ssl_ = nullptr;
  short wants_ = POLLIN;
  std::string error_;
};

}  // namespace meshlane
