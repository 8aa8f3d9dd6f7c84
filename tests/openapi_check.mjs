// openapi_check.mjs — openapi.yaml against the validator and against the live daemon.
//   node tests/openapi_check.mjs lint
//   node tests/openapi_check.mjs live PORT
// Run by tests/test_ship.c with NODE_PATH pointing at the npm packages it installed
// (@apidevtools/swagger-parser, ajv, yaml). Prints one line per check; exits 1 on the first
// failure with the validator's errors.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.resolve(process.env.DL_NODE_MODULES || 'node_modules', 'x.js'));
const SwaggerParser = require('@apidevtools/swagger-parser');
const Ajv2020 = require('ajv/dist/2020').default;
const YAML = require('yaml');

const file = 'openapi.yaml';
const doc = YAML.parse(readFileSync(file, 'utf8'));

function fail(msg) {
  console.error('FAIL ' + msg);
  process.exit(1);
}

async function lint() {
  // validate() checks the document against the OpenAPI 3.1 schema and resolves every $ref
  const api = await SwaggerParser.validate(structuredClone(doc));
  if (api.openapi !== '3.1.0') fail('not OpenAPI 3.1: ' + api.openapi);
  const ops = Object.values(api.paths).flatMap((p) => Object.keys(p));
  console.log(`ok lint: ${file} is valid OpenAPI ${api.openapi}, ${ops.length} operations`);
}

const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema({ $id: 'https://deltallm.local/openapi', components: doc.components }, 'oas');
function check(name, body, what) {
  const v = ajv.getSchema(`https://deltallm.local/openapi#/components/schemas/${name}`);
  if (!v) fail(`no schema ${name}`);
  if (!v(body)) fail(`${what} vs ${name}: ${ajv.errorsText(v.errors)}\n${JSON.stringify(body)}`);
  console.log(`ok ${what} matches ${name}`);
}
function mustReject(name, body, what) {
  const v = ajv.getSchema(`https://deltallm.local/openapi#/components/schemas/${name}`);
  if (v(body)) fail(`${what}: schema ${name} accepted a body it must refuse`);
  console.log(`ok ${what} rejected by ${name}`);
}

// Response schema of (path, method, status) as the document declares it.
function declared(p, method, status, ctype = 'application/json') {
  const op = doc.paths[p]?.[method];
  if (!op) fail(`${method} ${p} not in ${file}`);
  let r = op.responses[String(status)];
  if (!r) fail(`${method} ${p} ${status} not declared`);
  if (r.$ref) r = doc.components.responses[r.$ref.split('/').pop()];
  const s = r.content?.[ctype]?.schema;
  if (!s?.$ref) fail(`${method} ${p} ${status} ${ctype} has no schema ref`);
  return s.$ref.split('/').pop();
}

async function live(port) {
  const base = `http://127.0.0.1:${port}`;
  async function call(method, p, body, tplPath = p) {
    const r = await fetch(base + p, {
      method,
      headers: body ? { 'Content-Type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const ctype = (r.headers.get('content-type') || '').split(';')[0];
    const text = await r.text();
    return { status: r.status, ctype, text, tplPath, method: method.toLowerCase() };
  }
  function checkJson(r, what) {
    if (r.ctype !== 'application/json') fail(`${what}: content-type ${r.ctype}`);
    check(declared(r.tplPath, r.method, r.status), JSON.parse(r.text), `${what} (${r.status})`);
  }
  // SSE: every `data:` event but [DONE] is a chunk (or an error envelope); [DONE] comes last
  function checkStream(r, name, what) {
    if (r.status !== 200 || r.ctype !== 'text/event-stream') fail(`${what}: ${r.status} ${r.ctype}`);
    const events = r.text.split('\n\n').filter((e) => e.length);
    if (events.at(-1) !== 'data: [DONE]') fail(`${what}: stream does not end with [DONE]`);
    let usage = 0;
    for (const e of events.slice(0, -1)) {
      if (!e.startsWith('data: ')) fail(`${what}: bad event ${e}`);
      const body = JSON.parse(e.slice(6));
      check(name, body, `${what} chunk`);
      if (body.usage) usage++;
    }
    if (usage !== 1) fail(`${what}: expected one usage chunk, saw ${usage}`);
    console.log(`ok ${what}: ${events.length - 1} chunks`);
  }

  checkJson(await call('GET', '/health'), 'GET /health');
  checkJson(await call('GET', '/ready'), 'GET /ready');
  checkJson(await call('GET', '/v1/models'), 'GET /v1/models');
  const m = await call('GET', '/metrics');
  if (m.status !== 200 || m.ctype !== 'text/plain') fail(`/metrics: ${m.status} ${m.ctype}`);
  console.log('ok GET /metrics is text/plain');

  const delta = { enabled: true, theta: 0.5, window: 4, sink: 1, stages: 'both' };
  const cmpl = await call('POST', '/v1/completions',
    { prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 2, delta });
  checkJson(cmpl, 'POST /v1/completions');
  const c1 = JSON.parse(cmpl.text);
  // a drift detector that cannot fail is no detector: the same body with an unknown member
  // or a wrong type must be refused
  mustReject('Completion', { ...c1, surprise: 1 }, 'completion with an extra member');
  mustReject('Completion', { ...c1, timings: { ...c1.timings, prompt_ms: 'x' } },
    'completion with a string prompt_ms');

  const chatBody = {
    messages: [{ role: 'system', content: 'Tell a story.' }, { role: 'user', content: 'Lily' }],
    max_tokens: 8, temperature: 0, session_id: 'ship-test-1', logprobs: true, top_logprobs: 2,
    delta,
  };
  checkJson(await call('POST', '/v1/chat/completions', chatBody), 'POST /v1/chat/completions');
  checkStream(await call('POST', '/v1/chat/completions',
    { ...chatBody, session_id: undefined, stream: true, stream_options: { include_usage: true } }),
  'ChatCompletionChunk', 'chat stream');
  checkStream(await call('POST', '/v1/completions',
    { prompt: 'The cat', max_tokens: 6, temperature: 0, stream: true, logprobs: 1,
      stream_options: { include_usage: true } }),
  'CompletionChunk', 'completions stream');

  const ss = await call('GET', '/v1/sessions');
  checkJson(ss, 'GET /v1/sessions');
  if (!JSON.parse(ss.text).data.some((x) => x.id === 'ship-test-1')) fail('session not listed');
  const tok = await call('POST', '/tokenize', { content: 'Once upon a time', add_special: true });
  checkJson(tok, 'POST /tokenize');
  checkJson(await call('POST', '/detokenize', JSON.parse(tok.text)), 'POST /detokenize');
  checkJson(await call('DELETE', '/v1/sessions/ship-test-1', null, '/v1/sessions/{session_id}'),
    'DELETE /v1/sessions/{id}');
  checkJson(await call('DELETE', '/v1/sessions/ship-test-1', null, '/v1/sessions/{session_id}'),
    'DELETE /v1/sessions/{id} again');
  checkJson(await call('POST', '/v1/completions', { prompt: 'x', max_tokens: -3 }),
    'POST /v1/completions invalid');
  checkJson(await call('POST', '/v1/chat/completions', { messages: 'no' }),
    'POST /v1/chat/completions invalid');
  const nf = await call('GET', '/nope');
  if (nf.status !== 404) fail('/nope: ' + nf.status);
  check('ErrorResponse', JSON.parse(nf.text), 'GET /nope (404)');
}

const [mode, port] = process.argv.slice(2);
try {
  if (mode === 'lint') await lint();
  else if (mode === 'live') await live(port);
  else fail('usage: openapi_check.mjs lint | live PORT');
} catch (e) {
  fail(String(e?.stack || e));
}
