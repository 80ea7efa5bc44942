#include "control/esp_keys.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cctype>
#include <fstream>
#include <sstream>

namespace meshlane {

const esp_key* esp_key_file::find(uint8_t id) const {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it)
    if (it->id == id) return &*it;
  return nullptr;
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<esp_key_file> parse_esp_key_file(std::string_view text, std::string& error) {
  esp_key_file file;
  size_t line_number = 0;
  while (!text.empty()) {
    ++line_number;
    const size_t end = text.find('\n');
    std::string line(text.substr(0, end));
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::istringstream fields(line);
    std::vector<std::string> words;
    for (std::string word; fields >> word;) words.push_back(word);
    if (words.empty() || words[0][0] == '#') continue;
    const std::string where = "line " + std::to_string(line_number) + ": ";
    if (words.size() != 4) {
      error = where + "expected \"<id>[+] rfc4106(gcm(aes)) <hex key and salt> 128\", found " +
              std::to_string(words.size()) + " fields";
      return std::nullopt;
    }
    std::string id_text = words[0];
    if (id_text.back() == '+') id_text.pop_back();
    char* id_end = nullptr;
    const unsigned long id = std::strtoul(id_text.c_str(), &id_end, 10);
    if (id_text.empty() || *id_end || id < 1 || id > 15) {
      error = where + "the key id must be 1..15 (it travels in the SPI)";
      return std::nullopt;
    }
    if (words[1] != "rfc4106(gcm(aes))") {
      error = where + "only rfc4106(gcm(aes)) (AES-GCM, RFC 4106) is supported, found " + words[1];
      return std::nullopt;
    }
    if (words[3] != "128") {
      error = where + "the ICV must be 128 bits, found " + words[3];
      return std::nullopt;
    }
    const std::string& hex = words[2];
    std::string digits = hex.rfind("0x", 0) == 0 ? hex.substr(2) : hex;
    if (digits.size() != 40 && digits.size() != 72) {
      error = where + "the key must be 16 or 32 bytes followed by a 4-byte salt (40 or 72 hex digits), found " +
              std::to_string(digits.size()) + " digits";
      return std::nullopt;
    }
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i < digits.size(); i += 2) {
      const int high = hex_value(digits[i]), low = hex_value(digits[i + 1]);
      if (high < 0 || low < 0) {
        error = where + "the key is not hexadecimal";
        return std::nullopt;
      }
      bytes.push_back(static_cast<uint8_t>(high << 4 | low));
    }
    esp_key key;
    key.id = static_cast<uint8_t>(id);
    key.key.assign(bytes.begin(), bytes.end() - 4);
    std::copy(bytes.end() - 4, bytes.end(), key.salt.begin());
    for (const esp_key& earlier : file.keys) {
      if (earlier.id == key.id) {
        error = where + "key id " + std::to_string(id) + " appears twice";
        return std::nullopt;
      }
    }
    file.keys.push_back(std::move(key));
  }
  if (file.keys.empty()) {
    error = "the key file holds no key";
    return std::nullopt;
  }
  return file;
}

std::optional<esp_key_file> load_esp_key_file(const std::string& path, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = "cannot read the key file " + path;
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto file = parse_esp_key_file(text.str(), error);
  if (!file) error = path + ": " + error;
  return file;
}

namespace {

// HKDF-SHA256 (RFC 5869) of `secret` into a key of `key_length` bytes and a 4-byte salt;
// an empty key when OpenSSL fails (the caller treats it as a failure).
esp_key hkdf_key(uint8_t id, std::vector<uint8_t> secret, size_t key_length, std::string_view salt,
                 std::string_view info) {
  std::vector<uint8_t> out(key_length + 4);
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, secret.data(), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size()),
      OSSL_PARAM_construct_end()};
  const bool ok = ctx && EVP_KDF_derive(ctx, out.data(), out.size(), params) == 1;
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  OPENSSL_cleanse(secret.data(), secret.size());
  esp_key derived;
  derived.id = id;
  if (ok) {
    derived.key.assign(out.begin(), out.end() - 4);
    std::copy(out.end() - 4, out.end(), derived.salt.begin());
  }
  OPENSSL_cleanse(out.data(), out.size());
  return derived;
}

std::vector<uint8_t> key_and_salt(const esp_key& key) {
  std::vector<uint8_t> secret(key.key);
  secret.insert(secret.end(), key.salt.begin(), key.salt.end());
  return secret;
}

}  // namespace

esp_key derive_pair_key(const esp_key& master, std::string_view from_node, std::string_view to_node) {
  const std::string info = std::to_string(master.id) + "|" + std::string(from_node) + "|" + std::string(to_node);
  return hkdf_key(master.id, key_and_salt(master), master.key.size(), "meshlane-esp-v1", info);
}

esp_key derive_epoch_key(const esp_key& pair, uint16_t epoch) {
  if (epoch == 0) return pair;
  const char info[4] = {0, 0, static_cast<char>(epoch >> 8), static_cast<char>(epoch & 0xff)};
  return hkdf_key(pair.id, key_and_salt(pair), pair.key.size(), "meshlane-esp-epoch-v1", std::string_view(info, 4));
}

}  // namespace meshlane
