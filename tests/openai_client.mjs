// openai_client.mjs — drives deltallmd with the official `openai` npm client: completions and
// chat completions, streaming and not, greedy. Prints one JSON object with the four texts so
// that tests/test_daemon_clients.c can compare them with the CLI's output.
// Usage: node openai_client.mjs BASE_URL API_KEY PROMPT CHAT_CONTENT MAX_TOKENS
// (the package is resolved through NODE_PATH, set by the test to its install folder).
import OpenAI from 'openai';

const [baseURL, apiKey, prompt, chatContent, maxTok] = process.argv.slice(2);
const n = Number(maxTok);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const model = 'stories';
const out = {};

const c = await client.completions.create({ model, prompt, max_tokens: n, temperature: 0 });
out.completion = c.choices[0].text;
out.completion_finish = c.choices[0].finish_reason;
out.completion_tokens = c.usage.completion_tokens;

let s = '';
let chunks = 0;
let usage = null;
const cs = await client.completions.create({
  model, prompt, max_tokens: n, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
for await (const ch of cs) {
  chunks++;
  if (ch.choices.length) s += ch.choices[0].text ?? '';
  if (ch.usage) usage = ch.usage;
}
out.completion_stream = s;
out.completion_stream_chunks = chunks;
out.completion_stream_usage = usage ? usage.completion_tokens : -1;

const messages = [{ role: 'user', content: chatContent }];
const ch = await client.chat.completions.create({ model, messages, max_tokens: n, temperature: 0 });
out.chat = ch.choices[0].message.content;
out.chat_role = ch.choices[0].message.role;

let t = '';
let role = '';
const chs = await client.chat.completions.create({
  model, messages, max_tokens: n, temperature: 0, stream: true,
});
for await (const k of chs) {
  if (!k.choices.length) continue;
  const d = k.choices[0].delta;
  if (d.role) role = d.role;
  if (d.content) t += d.content;
}
out.chat_stream = t;
out.chat_stream_role = role;

process.stdout.write(JSON.stringify(out) + '\n');
