/* test_sha256.c — SHA-256 against the FIPS 180-2 / NIST example vectors, the same digest
 * whether fed whole, byte by byte or in odd chunks (padding boundaries 55/56/64 included),
 * and dl_sha256_file against a shared model file whose sha256 SOURCES.md lists. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"
#include "testutil.h"

static const struct { const char *msg; const char *hex; } vec[] = {
    {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrl"
     "mnopqrsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
};

START_TEST(test_vectors_whole)
{
    char hex[65];
    dl_sha256_hex(vec[_i].msg, strlen(vec[_i].msg), hex);
    ck_assert_str_eq(hex, vec[_i].hex);
}
END_TEST

START_TEST(test_vectors_bytewise)
{
    dl_sha256 s;
    uint8_t dg[32];
    char hex[65];
    dl_sha256_init(&s);
    for (size_t i = 0; vec[_i].msg[i]; i++)
        dl_sha256_update(&s, vec[_i].msg + i, 1);
    dl_sha256_final(&s, dg);
    dl_sha256_tohex(dg, hex);
    ck_assert_str_eq(hex, vec[_i].hex);
}
END_TEST

/* One million 'a', fed in chunks of 997 bytes so blocks straddle update calls. */
START_TEST(test_million_a)
{
    static char a[1000000];
    memset(a, 'a', sizeof a);
    dl_sha256 s;
    uint8_t dg[32];
    char hex[65];
    dl_sha256_init(&s);
    for (size_t off = 0; off < sizeof a; off += 997)
        dl_sha256_update(&s, a + off, sizeof a - off < 997 ? sizeof a - off : 997);
    dl_sha256_final(&s, dg);
    dl_sha256_tohex(dg, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
END_TEST

/* Lengths around the padding boundary: every split point gives the one-shot digest. */
START_TEST(test_splits_agree)
{
    char msg[130];
    for (int i = 0; i < 130; i++)
        msg[i] = (char)('A' + i % 26);
    const size_t lens[] = {55, 56, 57, 63, 64, 65, 119, 120, 128};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        char want[65], got[65];
        dl_sha256_hex(msg, lens[li], want);
        for (size_t cut = 0; cut <= lens[li]; cut++) {
            dl_sha256 s;
            uint8_t dg[32];
            dl_sha256_init(&s);
            dl_sha256_update(&s, msg, cut);
            dl_sha256_update(&s, msg + cut, lens[li] - cut);
            dl_sha256_final(&s, dg);
            dl_sha256_tohex(dg, got);
            ck_assert_msg(!strcmp(got, want), "len %zu cut %zu", lens[li], cut);
        }
    }
}
END_TEST

START_TEST(test_file)
{
    char hex[65], err[256];
    ck_assert_int_eq(dl_sha256_file(dl_test_shared("models/stories260K.bin"), hex, err, sizeof err), 0);
    ck_assert_str_eq(hex, "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
    ck_assert_int_eq(dl_sha256_file("/nonexistent/dl-sha", hex, err, sizeof err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dl-sha"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sha256");
    TCase *tc = tcase_create("core");
    int nvec = (int)(sizeof vec / sizeof vec[0]);
    tcase_add_loop_test(tc, test_vectors_whole, 0, nvec);
    tcase_add_loop_test(tc, test_vectors_bytewise, 0, nvec);
    tcase_add_test(tc, test_million_a);
    tcase_add_test(tc, test_splits_agree);
    tcase_add_test(tc, test_file);
    suite_add_tcase(s, tc);
    return dl_test_run(s);
}
