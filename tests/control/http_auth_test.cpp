// The credentials of the HTTPS admin surface: the password and token files (format, errors
// that name the file and never the secret, re-reading on change, a broken change keeping
// the credentials in force), the Authorization header forms, and the timing-safe compare.
//
// A test cannot measure a timing side channel reliably on a shared machine, so the compare
// is tested by its structure: this binary interposes OpenSSL's HMAC and CRYPTO_memcmp (a
// definition in the executable wins over libcrypto's for the static control library) and
// records what they were given. Every presented secret, right, wrong, shorter, longer or
// empty, must be digested whole once, and the comparison must be CRYPTO_memcmp over 32-byte
// digests against every known entry, never stopping at the first match.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "control/http_auth.h"
#include "control/log_ring.h"

namespace {

struct openssl_calls {
  bool recording = false;
  std::vector<size_t> digested;  // lengths of the data HMAC was given
  std::vector<size_t> compared;  // lengths CRYPTO_memcmp was given
};
openssl_calls calls;

}  // namespace

extern "C" int CRYPTO_memcmp(const void* a, const void* b, size_t length) {
  using real_fn = int (*)(const void*, const void*, size_t);
  static const auto real = reinterpret_cast<real_fn>(dlsym(RTLD_NEXT, "CRYPTO_memcmp"));
  if (calls.recording) calls.compared.push_back(length);
  return real(a, b, length);
}

extern "C" unsigned char* HMAC(const EVP_MD* md, const void* key, int key_length,
                               const unsigned char* data, size_t data_length, unsigned char* md_out,
                               unsigned int* md_length) {
  using real_fn = unsigned char* (*)(const EVP_MD*, const void*, int, const unsigned char*, size_t,
                                     unsigned char*, unsigned int*);
  static const auto real = reinterpret_cast<real_fn>(dlsym(RTLD_NEXT, "HMAC"));
  if (calls.recording) calls.digested.push_back(data_length);
  return real(md, key, key_length, data, data_length, md_out, md_length);
}

namespace meshlane {
namespace {

// Records the OpenSSL calls made while it lives.
struct recorded_calls {
  recorded_calls() {
    calls = {};
    calls.recording = true;
  }
  ~recorded_calls() { calls.recording = false; }
};

std::string basic(const std::string& user_password) {
  std::string encoded(4 * ((user_password.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()),
                                reinterpret_cast<const unsigned char*>(user_password.data()),
                                static_cast<int>(user_password.size()));
  encoded.resize(static_cast<size_t>(n));
  return "Basic " + encoded;
}

class CredentialFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("meshlane-test-auth-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    // By rename, as a Secret volume or an editor replaces a file.
    std::ofstream(path + ".new", std::ios::binary) << text;
    std::filesystem::rename(path + ".new", path);
    return path;
  }
  std::unique_ptr<http_credentials> load(const http_credential_files& files, std::string& error) {
    return http_credentials::load(files, &log_, error);
  }

  std::filesystem::path dir_;
  log_ring log_{64, false};
};

TEST(SecretCompare, EveryInputIsDigestedWholeAndComparedAsEqualLengthDigestsWithCryptoMemcmp) {
  const std::vector<secret_digest> known{digest_secret("s3cret-token-one"),
                                         digest_secret("another-secret"), digest_secret("third")};
  struct presented_case {
    std::string text;
    bool expected;
  };
  for (const auto& [text, expected] : std::vector<presented_case>{
           {"s3cret-token-one", true},   // the first entry: the others are compared all the same
           {"third", true},              // the last entry
           {"s3cret-token-two", false},  // equal length, differs at the end
           {"x3cret-token-one", false},  // equal length, differs at the start
           {"s3", false},                // a prefix
           {"s3cret-token-one-and-more", false},  // longer
           {"", false},
           {std::string(10000, 'a'), false}}) {
    recorded_calls recorded;
    EXPECT_EQ(matches_any(text, known), expected) << text.substr(0, 40);
    ASSERT_EQ(calls.digested, std::vector<size_t>{text.size()})
        << "not digested once, whole: " << text.substr(0, 40);
    EXPECT_EQ(calls.compared, std::vector<size_t>(known.size(), 32))
        << "not CRYPTO_memcmp of 32-byte digests "
           "against every entry: "
        << text.substr(0, 40);
  }
}

TEST(SecretCompare, DigestsAreKeyedAndStable) {
  EXPECT_EQ(digest_secret("a"), digest_secret("a"));
  EXPECT_NE(digest_secret("a"), digest_secret("b"));
  // Keyed: not the plain SHA-256 of the secret (which a dictionary could reverse).
  unsigned char plain[32];
  unsigned int length = 0;
  EVP_Digest("a", 1, plain, &length, EVP_sha256(), nullptr);
  EXPECT_NE(std::memcmp(plain, digest_secret("a").data(), 32), 0);
}

TEST_F(CredentialFiles, BasicAndBearerRightWrongAndMalformed) {
  const std::string passwords =
      write("users", "# admin surface\n\nadmin:correct horse:battery\r\nviewer:v1ew\n");
  const std::string tokens = write("tokens", "  token-one  \n# rolled out next\ntoken-two\n");
  std::string error;
  auto credentials = load({passwords, tokens}, error);
  ASSERT_TRUE(credentials) << error;
  EXPECT_EQ(credentials->users(), 2u);
  EXPECT_EQ(credentials->tokens(), 2u);

  EXPECT_TRUE(credentials->admits(
      basic("admin:correct horse:battery")));  // ':' in a password, CR taken off
  EXPECT_TRUE(credentials->admits(basic("viewer:v1ew")));
  EXPECT_TRUE(credentials->admits(
      "basic " + basic("viewer:v1ew").substr(6)));  // the scheme is case-insensitive
  EXPECT_FALSE(credentials->admits(basic("admin:correct horse:battery\r")));
  EXPECT_FALSE(credentials->admits(basic("admin:correct horse")));
  EXPECT_FALSE(credentials->admits(basic("admin:v1ew")));  // another user's password
  EXPECT_FALSE(credentials->admits(basic("nobody:v1ew")));
  EXPECT_FALSE(credentials->admits(basic("admin")));
  EXPECT_FALSE(credentials->admits(""));
  EXPECT_FALSE(credentials->admits("Basic"));
  EXPECT_FALSE(credentials->admits("Basic !!!!"));
  EXPECT_FALSE(credentials->admits("Basic YWRtaW46"));  // not a multiple of 4
  EXPECT_FALSE(credentials->admits("Digest username=\"admin\""));

  EXPECT_TRUE(credentials->admits("Bearer token-one"));
  EXPECT_TRUE(credentials->admits("Bearer token-two"));
  EXPECT_FALSE(credentials->admits("Bearer token-thr"));
  EXPECT_FALSE(credentials->admits("Bearer token-one-more"));
  EXPECT_FALSE(credentials->admits("Bearer "));
  EXPECT_FALSE(credentials->admits(basic("token-one")));
  EXPECT_EQ(credentials->challenges(),
            (std::vector<std::string>{"Basic realm=\"meshlane\"", "Bearer realm=\"meshlane\""}));

  // Through admits, too: the wrong password for a real user and an unknown user each cost one
  // digest of what was presented and one compare per user.
  for (const std::string presented :
       {"admin:wrong", "admin:correct horse:battery", "x:y", "a-much-longer-user:and-password"}) {
    recorded_calls recorded;
    credentials->admits(basic(presented));
    EXPECT_EQ(calls.digested, std::vector<size_t>{presented.size()}) << presented;
    EXPECT_EQ(calls.compared, std::vector<size_t>(2, 32)) << presented;
  }
}

TEST_F(CredentialFiles, OneKindOnlyAdmitsOnlyThatKind) {
  std::string error;
  auto only_tokens = load({"", write("tokens", "t0ken\n")}, error);
  ASSERT_TRUE(only_tokens) << error;
  EXPECT_FALSE(only_tokens->admits(basic("t0ken:t0ken")));
  EXPECT_TRUE(only_tokens->admits("Bearer t0ken"));
  EXPECT_EQ(only_tokens->challenges(), std::vector<std::string>{"Bearer realm=\"meshlane\""});
  auto only_users = load({write("users", "admin:pw\n"), ""}, error);
  ASSERT_TRUE(only_users) << error;
  EXPECT_FALSE(only_users->admits("Bearer pw"));
  EXPECT_EQ(only_users->challenges(), std::vector<std::string>{"Basic realm=\"meshlane\""});
}

TEST_F(CredentialFiles, BadFilesAreRefusedNamingTheFileButNeverTheSecret) {
  std::string error;
  EXPECT_FALSE(load({"", ""}, error));
  EXPECT_NE(error.find("no password file and no token file"), std::string::npos) << error;

  const std::string missing = (dir_ / "absent").string();
  EXPECT_FALSE(load({missing, ""}, error));
  EXPECT_EQ(error, "cannot read " + missing + ": No such file or directory");

  const std::string no_colon = write("no-colon", "admin:ok\nhunter2-secret\n");
  EXPECT_FALSE(load({no_colon, ""}, error));
  EXPECT_EQ(error, no_colon + " line 2: expected user:password");
  EXPECT_EQ(error.find("hunter2"), std::string::npos);

  const std::string empty_password = write("empty-password", "admin:\n");
  EXPECT_FALSE(load({empty_password, ""}, error));
  EXPECT_EQ(error, empty_password + " line 1: the password is empty");

  const std::string empty_user = write("empty-user", ":pw\n");
  EXPECT_FALSE(load({empty_user, ""}, error));
  EXPECT_EQ(error, empty_user + " line 1: expected user:password");

  const std::string only_comments = write("comments", "# nothing yet\n\n");
  EXPECT_FALSE(load({only_comments, ""}, error));
  EXPECT_EQ(error, only_comments + " holds no user:password line");
  EXPECT_FALSE(load({"", only_comments}, error));
  EXPECT_EQ(error, only_comments + " holds no token");

  const std::string spaced_token = write("spaced", "two words-secret\n");
  EXPECT_FALSE(load({"", spaced_token}, error));
  EXPECT_EQ(error, spaced_token + " line 1: a token holds no blanks");
}

TEST_F(CredentialFiles, ChangedFilesAreReadAgainAndABrokenChangeKeepsTheRunningOnes) {
  const std::string users = write("users", "admin:first\n");
  std::string error;
  auto credentials = load({users, ""}, error);
  ASSERT_TRUE(credentials) << error;
  EXPECT_TRUE(credentials->admits(basic("admin:first")));

  // Looked at, at most once a second: give the check its second.
  write("users", "admin:second\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(credentials->admits(basic("admin:second")));
  EXPECT_FALSE(credentials->admits(basic("admin:first")));

  write("users", "admin-without-password\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(credentials->admits(basic("admin:second")))
      << "a broken file replaced the running credentials";
  bool logged = false;
  for (const auto& line : log_.recent(10))
    logged |= line.level == log_level::error &&
              line.message.find(users + " line 1: expected user:password") != std::string::npos;
  EXPECT_TRUE(logged) << "the broken file was not logged by name";

  std::filesystem::remove(users);  // a Secret deleted: keep serving with what was loaded
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(credentials->admits(basic("admin:second")));

  // Written in place (same inode), as an operator's editor may.
  std::ofstream(users, std::ios::binary) << "admin:third\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(credentials->admits(basic("admin:third")));
  EXPECT_FALSE(credentials->admits(basic("admin:second")));
}

}  // namespace
}  // namespace meshlane
