/* chat.c — the chat-template families of chat.h, rendered in C.
 *
 * Each renderer follows its reference template line by line (kept in comments), so the
 * differences between families — which ones trim content, where the system message goes,
 * what separates turns — stay visible. Output goes through a writer that counts the bytes
 * even when the buffer is full, which gives the size-retry contract for free.
 */
#include "chat.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

/* ---- detection ---- */

static int has_token(const dl_tokenizer *t, const char *text)
{
    return t && dl_tokenizer_find(t, text, strlen(text)) >= 0;
}

enum dl_chat_style dl_chat_detect(const char *tmpl, const dl_tokenizer *t)
{
    if (tmpl) {
        if (strstr(tmpl, "<|start_header_id|>"))
            return strstr(tmpl, "Cutting Knowledge Date") ? DL_CHAT_LLAMA31 : DL_CHAT_LLAMA3;
        if (strstr(tmpl, "<|im_start|>"))
            return DL_CHAT_CHATML;
        if (strstr(tmpl, "[INST]"))
            return DL_CHAT_LLAMA2;
    }
    /* No (known) template: the special tokens say what the model was tuned on. */
    if (has_token(t, "<|start_header_id|>") && has_token(t, "<|eot_id|>"))
        return DL_CHAT_LLAMA3;
    if (has_token(t, "<|im_start|>") && has_token(t, "<|im_end|>"))
        return DL_CHAT_CHATML;
    return DL_CHAT_PLAIN;
}

const char *dl_chat_style_name(enum dl_chat_style style)
{
    switch (style) {
    case DL_CHAT_PLAIN: return "plain";
    case DL_CHAT_LLAMA3: return "llama3";
    case DL_CHAT_LLAMA31: return "llama3.1";
    case DL_CHAT_CHATML: return "chatml";
    case DL_CHAT_LLAMA2: return "llama2";
    }
    return "unknown";
}

/* ---- output writer: copies what fits, counts everything ---- */

typedef struct writer {
    char *out;
    size_t cap; /* bytes available, including the NUL */
    size_t len; /* bytes the full text needs so far */
} writer;

static void put_n(writer *w, const char *s, size_t n)
{
    if (w->cap > 0 && w->len < w->cap - 1) {
        size_t room = w->cap - 1 - w->len;
        memcpy(w->out + w->len, s, n < room ? n : room);
    }
    w->len += n;
}

static void put(writer *w, const char *s) { put_n(w, s, strlen(s)); }

/* Jinja's `| trim` / Python's str.strip(): ASCII whitespace at both ends. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static void put_trimmed(writer *w, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_space(s[n - 1]))
        n--;
    put_n(w, s, n);
}

/* Trailing-whitespace strip only (for text that is the tail of a stripped string). */
static void put_rtrimmed(writer *w, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        n--;
    put_n(w, s, n);
}

/* A JSON string literal (Jinja's `tojson` on a string): quotes, escapes, UTF-8 kept. */
static void put_json_string(writer *w, const char *s)
{
    put(w, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': put(w, "\\\""); break;
        case '\\': put(w, "\\\\"); break;
        case '\n': put(w, "\\n"); break;
        case '\r': put(w, "\\r"); break;
        case '\t': put(w, "\\t"); break;
        case '\b': put(w, "\\b"); break;
        case '\f': put(w, "\\f"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                put(w, esc);
            } else {
                put_n(w, s, 1);
            }
        }
    }
    put(w, "\"");
}

/* ---- the families ---- */

/* Meta-Llama-3-8B-Instruct:
 *   for m: '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>'
 *   add_generation_prompt: '<|start_header_id|>assistant<|end_header_id|>\n\n'
 * (bos_token prefix left to the tokenizer). */
static void header(writer *w, const char *role)
{
    put(w, "<|start_header_id|>");
    put(w, role);
    put(w, "<|end_header_id|>\n\n");
}

static int fmt_llama3(writer *w, const dl_chat_msg *m, int n, int gen)
{
    for (int i = 0; i < n; i++) {
        header(w, m[i].role);
        put_trimmed(w, m[i].content);
        put(w, "<|eot_id|>");
    }
    if (gen)
        header(w, "assistant");
    return 0;
}

/* Llama-3.1-8B / 3.2-3B-Instruct without tools: a system block is always emitted, holding
 * the knowledge-cutoff lines and the (trimmed) first message when its role is system.
 * The date is the template's own fallback "26 Jul 2024"; llama-server also uses it for
 * 3.1, while for 3.2 it passes today's date through strftime_now — we keep the fixed date
 * so that prompts (and prompt caches) do not change from one day to the next. Tool results
 * (role "tool"/"ipython") go under the ipython header with the content JSON-quoted: a
 * string "is iterable" in Jinja, so the template sends it through `tojson`. */
static int fmt_llama31(writer *w, const dl_chat_msg *m, int n, int gen)
{
    int first = 0;
    header(w, "system");
    put(w, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
    if (n > 0 && strcmp(m[0].role, "system") == 0) {
        put_trimmed(w, m[0].content);
        first = 1;
    }
    put(w, "<|eot_id|>");
    for (int i = first; i < n; i++) {
        if (strcmp(m[i].role, "tool") == 0 || strcmp(m[i].role, "ipython") == 0) {
            header(w, "ipython");
            put_json_string(w, m[i].content);
        } else {
            header(w, m[i].role);
            put_trimmed(w, m[i].content);
        }
        put(w, "<|eot_id|>");
    }
    if (gen)
        header(w, "assistant");
    return 0;
}

/* ChatML: '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n' per message;
 * add_generation_prompt: '<|im_start|>assistant\n'. Content is not trimmed. */
static int fmt_chatml(writer *w, const dl_chat_msg *m, int n, int gen)
{
    for (int i = 0; i < n; i++) {
        put(w, "<|im_start|>");
        put(w, m[i].role);
        put(w, "\n");
        put(w, m[i].content);
        put(w, "<|im_end|>\n");
    }
    if (gen)
        put(w, "<|im_start|>assistant\n");
    return 0;
}

/* Llama-2-chat (Meta's template):
 *   an optional leading system message is folded into the first user turn as
 *     '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content
 *   user:      bos_token + '[INST] ' + content.strip() + ' [/INST]'
 *   assistant: ' ' + content.strip() + ' ' + eos_token
 * Roles must alternate user/assistant starting with user, else the template raises; so do
 * we. The first BOS comes from the tokenizer; later turns carry "<s>" as text. The template
 * has no generation prompt: the reply follows " [/INST]" directly. */
static int fmt_llama2(writer *w, const dl_chat_msg *m, int n, int gen)
{
    const char *sys = NULL;
    int first = 0;
    if (n > 0 && strcmp(m[0].role, "system") == 0) {
        sys = m[0].content;
        first = 1;
    }
    for (int i = first; i < n; i++) {
        int user_turn = (i - first) % 2 == 0;
        if (strcmp(m[i].role, user_turn ? "user" : "assistant") != 0)
            return -EINVAL;
        if (!user_turn) {
            put(w, " ");
            put_trimmed(w, m[i].content);
            put(w, " </s>");
            continue;
        }
        put(w, i == first ? "[INST] " : "<s>[INST] ");
        if (i == first && sys) {
            /* strip() applies to the whole concatenation: the system text keeps its
             * trailing whitespace, the user text keeps its leading whitespace */
            put(w, "<<SYS>>\n");
            put(w, sys);
            put(w, "\n<</SYS>>\n\n");
            put_rtrimmed(w, m[i].content);
        } else {
            put_trimmed(w, m[i].content);
        }
        put(w, " [/INST]");
    }
    return 0;
}

/* No template: one "Role: content" line per message and an "Assistant:" cue. */
static int fmt_plain(writer *w, const dl_chat_msg *m, int n, int gen)
{
    for (int i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (r[0]) {
            char c = r[0];
            if (c >= 'a' && c <= 'z')
                c = (char)(c - 'a' + 'A');
            put_n(w, &c, 1);
            put(w, r + 1);
        }
        put(w, ": ");
        put_trimmed(w, m[i].content);
        put(w, "\n");
    }
    if (gen)
        put(w, "Assistant:");
    return 0;
}

int dl_chat_format(enum dl_chat_style style, const dl_chat_msg *m, int n,
                   int add_generation_prompt, char *out, size_t cap)
{
    if (n < 0 || (n > 0 && !m) || (cap > 0 && !out))
        return -EINVAL;
    for (int i = 0; i < n; i++)
        if (!m[i].role || !m[i].content)
            return -EINVAL;
    writer w = {out, cap, 0};
    int rc;
    switch (style) {
    case DL_CHAT_LLAMA3: rc = fmt_llama3(&w, m, n, add_generation_prompt); break;
    case DL_CHAT_LLAMA31: rc = fmt_llama31(&w, m, n, add_generation_prompt); break;
    case DL_CHAT_CHATML: rc = fmt_chatml(&w, m, n, add_generation_prompt); break;
    case DL_CHAT_LLAMA2: rc = fmt_llama2(&w, m, n, add_generation_prompt); break;
    case DL_CHAT_PLAIN: rc = fmt_plain(&w, m, n, add_generation_prompt); break;
    default: return -EINVAL;
    }
    if (rc < 0) {
        if (cap > 0)
            out[0] = '\0';
        return rc;
    }
    if (w.len > INT_MAX)
        return -EOVERFLOW;
    if (cap > 0)
        out[w.len < cap ? w.len : cap - 1] = '\0';
    return (int)w.len;
}
