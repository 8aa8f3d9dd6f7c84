/* chat.h — turning a list of chat messages into the prompt text a model was trained on.
 *
 * GGUF files carry a Jinja chat template (`tokenizer.chat_template`). Rather than run
 * Jinja, we recognise the few template families we serve and render them in C, producing
 * the same text the real template produces for plain role/content messages:
 *
 *   DL_CHAT_LLAMA3   Llama-3 ("<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>")
 *   DL_CHAT_LLAMA31  Llama-3.1 / 3.2: Llama-3 plus the system block the template always
 *                    emits ("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024")
 *   DL_CHAT_CHATML   ChatML ("<|im_start|>role\n...<|im_end|>\n")
 *   DL_CHAT_LLAMA2   Llama-2 ("[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>")
 *   DL_CHAT_PLAIN    no template: "System: ...\nUser: ...\nAssistant:"
 *
 * The BOS token is NOT written at the start: the tokenizer adds it (add_bos), exactly once.
 * Special-token text inside the output ("<|eot_id|>", later-turn "<s>") must be tokenized
 * with parse_special on. Message contents are not checked for special-token text; callers
 * that take untrusted content should tokenize it without parse_special if that matters.
 */
#ifndef DL_CHAT_H
#define DL_CHAT_H

#include <stddef.h>

#include "tokenizer.h"

enum dl_chat_style {
    DL_CHAT_PLAIN = 0,
    DL_CHAT_LLAMA3,
    DL_CHAT_LLAMA31,
    DL_CHAT_CHATML,
    DL_CHAT_LLAMA2,
};

typedef struct dl_chat_msg {
    const char *role;    /* "system", "user", "assistant" (others pass through by name) */
    const char *content; /* UTF-8, NUL-terminated */
} dl_chat_msg;

/* Pick the style from the template text (may be NULL). Without a recognisable template,
 * the tokenizer's vocabulary decides (t may be NULL): <|start_header_id|> -> LLAMA3,
 * <|im_start|> -> CHATML, otherwise PLAIN. */
enum dl_chat_style dl_chat_detect(const char *tmpl, const dl_tokenizer *t);

/* "llama3", "llama3.1", "chatml", "llama2", "plain". */
const char *dl_chat_style_name(enum dl_chat_style style);

/* Render n messages; with add_generation_prompt the text ends where the assistant's reply
 * begins. Writes at most cap bytes including a terminating NUL (out may be NULL when cap
 * is 0) and returns the length the full text needs, without the NUL: when that is >= cap,
 * call again with a buffer of at least return + 1 bytes. Negative error (-EINVAL) for a
 * NULL role or content, or for a role the style cannot express (Llama-2 takes only
 * system/user/assistant). */
int dl_chat_format(enum dl_chat_style style, const dl_chat_msg *m, int n,
                   int add_generation_prompt, char *out, size_t cap);

#endif
