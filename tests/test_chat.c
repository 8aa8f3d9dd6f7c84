/* test_chat.c — chat-template detection and rendering, against exact expected prompts.
 *
 * The expected strings were written from the reference templates (Meta's Llama-3 and
 * Llama-2-chat templates, ChatML, and the Llama-3.1 / 3.2 files in shared/models/templates)
 * with bos_token left out, since the tokenizer adds BOS.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Render into a buffer sized by a first, measuring call; checks the two calls agree. */
static char *render(enum dl_chat_style st, const dl_chat_msg *m, int n, int gen)
{
    int need = dl_chat_format(st, m, n, gen, NULL, 0);
    ck_assert_int_ge(need, 0);
    char *buf = malloc((size_t)need + 1);
    ck_assert_int_eq(dl_chat_format(st, m, n, gen, buf, (size_t)need + 1), need);
    ck_assert_uint_eq(strlen(buf), (size_t)need);
    return buf;
}

static void expect(enum dl_chat_style st, const dl_chat_msg *m, int n, int gen,
                   const char *want)
{
    char *got = render(st, m, n, gen);
    ck_assert_str_eq(got, want);
    free(got);
}

static const dl_chat_msg ONE_USER[] = {{"user", "Hello!"}};
static const dl_chat_msg MULTI[] = {
    {"system", "You are terse."},
    {"user", "Hi"},
    {"assistant", "Hello."},
    {"user", "  How are you?\n"},
};

START_TEST(llama3_format)
{
    expect(DL_CHAT_LLAMA3, ONE_USER, 1, 1,
           "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(DL_CHAT_LLAMA3, MULTI, 4, 1,
           "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    /* without a generation prompt the text ends after the last turn */
    expect(DL_CHAT_LLAMA3, ONE_USER, 1, 0,
           "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>");
}
END_TEST

START_TEST(llama31_format)
{
    const char *sys_block = "<|start_header_id|>system<|end_header_id|>\n\n"
                            "Cutting Knowledge Date: December 2023\n"
                            "Today Date: 26 Jul 2024\n\n";
    char want[1024];
    /* no system message: the block is still there, empty after the dates */
    snprintf(want, sizeof want, "%s<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n", sys_block);
    expect(DL_CHAT_LLAMA31, ONE_USER, 1, 1, want);
    snprintf(want, sizeof want, "%sYou are terse.<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n", sys_block);
    expect(DL_CHAT_LLAMA31, MULTI, 4, 1, want);
    /* the system text is trimmed; a later system message is an ordinary turn */
    const dl_chat_msg m2[] = {{"system", "  Be brief. \n"}, {"user", "a"}, {"system", "b "}};
    snprintf(want, sizeof want, "%sBe brief.<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\na<|eot_id|>"
             "<|start_header_id|>system<|end_header_id|>\n\nb<|eot_id|>", sys_block);
    expect(DL_CHAT_LLAMA31, m2, 3, 0, want);
    /* tool results: ipython header, content as a JSON string */
    const dl_chat_msg m3[] = {{"user", "w?"}, {"tool", "{\"t\": 20,\n \"p\": \"a\\b\"}\t"}};
    snprintf(want, sizeof want, "%s<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nw?<|eot_id|>"
             "<|start_header_id|>ipython<|end_header_id|>\n\n"
             "\"{\\\"t\\\": 20,\\n \\\"p\\\": \\\"a\\\\b\\\"}\\t\"<|eot_id|>", sys_block);
    expect(DL_CHAT_LLAMA31, m3, 2, 0, want);
}
END_TEST

START_TEST(chatml_format)
{
    expect(DL_CHAT_CHATML, ONE_USER, 1, 1,
           "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    /* ChatML does not trim */
    expect(DL_CHAT_CHATML, MULTI, 4, 1,
           "<|im_start|>system\nYou are terse.<|im_end|>\n"
           "<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>assistant\nHello.<|im_end|>\n"
           "<|im_start|>user\n  How are you?\n<|im_end|>\n"
           "<|im_start|>assistant\n");
    expect(DL_CHAT_CHATML, MULTI, 2, 0,
           "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}
END_TEST

START_TEST(llama2_format)
{
    /* Llama-2 has no generation prompt: gen on or off gives the same text */
    expect(DL_CHAT_LLAMA2, ONE_USER, 1, 1, "[INST] Hello! [/INST]");
    expect(DL_CHAT_LLAMA2, ONE_USER, 1, 0, "[INST] Hello! [/INST]");
    expect(DL_CHAT_LLAMA2, MULTI, 4, 1,
           "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
           "<s>[INST] How are you? [/INST]");
    /* strip() acts on the whole first turn: the system text is kept as given */
    const dl_chat_msg m2[] = {{"system", "  sys \n"}, {"user", " q1 "}, {"assistant", " a1 "},
                              {"user", "q2"}};
    expect(DL_CHAT_LLAMA2, m2, 4, 1,
           "[INST] <<SYS>>\n  sys \n\n<</SYS>>\n\n q1 [/INST] a1 </s><s>[INST] q2 [/INST]");
    const dl_chat_msg m3[] = {{"user", "one"}, {"assistant", "two"}};
    expect(DL_CHAT_LLAMA2, m3, 2, 0, "[INST] one [/INST] two </s>");
    /* roles must alternate, as the template requires */
    char buf[256];
    const dl_chat_msg bad1[] = {{"user", "a"}, {"user", "b"}};
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA2, bad1, 2, 1, buf, sizeof buf), -EINVAL);
    ck_assert_str_eq(buf, "");
    const dl_chat_msg bad2[] = {{"assistant", "a"}};
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA2, bad2, 1, 1, buf, sizeof buf), -EINVAL);
    const dl_chat_msg bad3[] = {{"system", "s"}, {"tool", "x"}};
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA2, bad3, 2, 1, buf, sizeof buf), -EINVAL);
}
END_TEST

START_TEST(plain_format)
{
    expect(DL_CHAT_PLAIN, ONE_USER, 1, 1, "User: Hello!\nAssistant:");
    expect(DL_CHAT_PLAIN, MULTI, 4, 1,
           "System: You are terse.\nUser: Hi\nAssistant: Hello.\nUser: How are you?\n"
           "Assistant:");
    expect(DL_CHAT_PLAIN, MULTI, 2, 0, "System: You are terse.\nUser: Hi\n");
    expect(DL_CHAT_PLAIN, NULL, 0, 1, "Assistant:");
}
END_TEST

/* The size contract: the return value is the full length; whatever cap is given, the
 * buffer holds a NUL-terminated prefix; a retry with return + 1 bytes gives it all. */
START_TEST(size_retry)
{
    const enum dl_chat_style styles[] = {DL_CHAT_PLAIN, DL_CHAT_LLAMA3, DL_CHAT_LLAMA31,
                                         DL_CHAT_CHATML, DL_CHAT_LLAMA2};
    for (int si = 0; si < N_OF(styles); si++) {
        char *full = render(styles[si], MULTI, 4, 1);
        size_t n = strlen(full);
        char buf[512];
        ck_assert_uint_lt(n + 1, sizeof buf);
        for (size_t cap = 1; cap <= n + 1; cap++) {
            memset(buf, 'X', sizeof buf);
            int r = dl_chat_format(styles[si], MULTI, 4, 1, buf, cap);
            ck_assert_int_eq(r, (int)n);
            ck_assert_uint_eq(strlen(buf), cap - 1);
            ck_assert(memcmp(buf, full, cap - 1) == 0);
            ck_assert_int_eq(buf[cap], 'X'); /* nothing written past cap */
        }
        free(full);
    }
    /* cap 0: nothing is written, out may be NULL */
    ck_assert_int_gt(dl_chat_format(DL_CHAT_CHATML, MULTI, 4, 1, NULL, 0), 0);
}
END_TEST

START_TEST(bad_arguments)
{
    char buf[64];
    const dl_chat_msg nul_content[] = {{"user", NULL}};
    const dl_chat_msg nul_role[] = {{NULL, "x"}};
    ck_assert_int_eq(dl_chat_format(DL_CHAT_CHATML, nul_content, 1, 1, buf, sizeof buf),
                     -EINVAL);
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA3, nul_role, 1, 1, buf, sizeof buf), -EINVAL);
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA3, ONE_USER, -1, 1, buf, sizeof buf), -EINVAL);
    ck_assert_int_eq(dl_chat_format(DL_CHAT_LLAMA3, ONE_USER, 1, 1, NULL, 10), -EINVAL);
    ck_assert_int_eq(dl_chat_format((enum dl_chat_style)42, ONE_USER, 1, 1, buf, sizeof buf),
                     -EINVAL);
}
END_TEST

START_TEST(detect_from_template)
{
    size_t len;
    char *t32 = dl_test_read_file(
        dl_test_shared("models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"), &len);
    char *t31 = dl_test_read_file(
        dl_test_shared("models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"), &len);
    ck_assert_ptr_nonnull(t32);
    ck_assert_ptr_nonnull(t31);
    ck_assert_int_eq(dl_chat_detect(t32, NULL), DL_CHAT_LLAMA31);
    ck_assert_int_eq(dl_chat_detect(t31, NULL), DL_CHAT_LLAMA31);
    free(t32);
    free(t31);

    const char *llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}"
                         "{% set content = '<|start_header_id|>' + message['role'] + "
                         "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
                         "{{ content }}{% endfor %}";
    const char *chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
                         "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    const char *llama2 = "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
                         "content.strip() + ' [/INST]' }}{% endif %}";
    ck_assert_int_eq(dl_chat_detect(llama3, NULL), DL_CHAT_LLAMA3);
    ck_assert_int_eq(dl_chat_detect(chatml, NULL), DL_CHAT_CHATML);
    ck_assert_int_eq(dl_chat_detect(llama2, NULL), DL_CHAT_LLAMA2);
    ck_assert_int_eq(dl_chat_detect("{{ messages }}", NULL), DL_CHAT_PLAIN);
    ck_assert_int_eq(dl_chat_detect(NULL, NULL), DL_CHAT_PLAIN);

    ck_assert_str_eq(dl_chat_style_name(DL_CHAT_PLAIN), "plain");
    ck_assert_str_eq(dl_chat_style_name(DL_CHAT_LLAMA3), "llama3");
    ck_assert_str_eq(dl_chat_style_name(DL_CHAT_LLAMA31), "llama3.1");
    ck_assert_str_eq(dl_chat_style_name(DL_CHAT_CHATML), "chatml");
    ck_assert_str_eq(dl_chat_style_name(DL_CHAT_LLAMA2), "llama2");
}
END_TEST

/* Without a template, the vocabulary decides: the Llama-3 vocabulary has the header
 * tokens, the Llama-2 one does not. */
static enum dl_chat_style detect_vocab(const char *rel)
{
    char err[256];
    dl_gguf *g = NULL;
    dl_tokenizer *t = NULL;
    int rc = dl_gguf_open(dl_test_shared(rel), &g, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    rc = dl_tokenizer_from_gguf(g, &t, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    enum dl_chat_style st = dl_chat_detect(NULL, t);
    /* a recognised template still wins over the vocabulary */
    ck_assert_int_eq(dl_chat_detect("<|im_start|>", t), DL_CHAT_CHATML);
    dl_tokenizer_free(t);
    dl_gguf_close(g);
    return st;
}

START_TEST(detect_from_vocab)
{
    ck_assert_int_eq(detect_vocab("models/ggml-vocab-llama-bpe.derived.gguf"), DL_CHAT_LLAMA3);
    ck_assert_int_eq(detect_vocab("models/ggml-vocab-llama-spm.gguf"), DL_CHAT_PLAIN);
}
END_TEST

static Suite *chat_suite(void)
{
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, llama3_format);
    tcase_add_test(tc, llama31_format);
    tcase_add_test(tc, chatml_format);
    tcase_add_test(tc, llama2_format);
    tcase_add_test(tc, plain_format);
    tcase_add_test(tc, size_retry);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, detect_from_template);
    tcase_add_test(tc, detect_from_vocab);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return dl_test_run(chat_suite()); }
