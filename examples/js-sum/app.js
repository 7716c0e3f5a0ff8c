// A Corral service in JavaScript (jco componentize): POST {"a": [4 numbers], "b": [4 numbers]}
// runs the `add` model (tests/fixtures/add.onnx: sum = a + b over f32 [2, 2]) through wasi:nn
// and answers {"sum": [...], "shape": [2, 2]}. A wasi:nn error comes back as 422 with its code.
import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';

const MAX_BODY = 64 * 1024;

// StarlingMonkey (the JavaScript engine componentize-js embeds) implements
// wasi:http/incoming-handler with the web's fetch event.
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  let query;
  try {
    const body = await request.arrayBuffer();
    if (body.byteLength > MAX_BODY) {
      return badRequest(`the body is larger than ${MAX_BODY} bytes`);
    }
    query = JSON.parse(new TextDecoder().decode(body));
  } catch (e) {
    return badRequest(`the body is not JSON: ${e.message}`);
  }
  const a = numbers(query?.a);
  const b = numbers(query?.b);
  if (a === null || b === null) {
    return badRequest("'a' and 'b' must hold 4 numbers each");
  }
  try {
    return reply(200, add(a, b));
  } catch (e) {
    // wasi:nn errors are thrown as ComponentError; `payload` is the `error` resource.
    const error = e?.payload;
    if (error && typeof error.code === 'function') {
      return reply(422, { code: error.code(), message: error.data() });
    }
    throw e;
  }
}

function add(a, b) {
  const context = loadByName('add').initExecutionContext();
  const outputs = new Map(context.compute([['a', f32Tensor(a)], ['b', f32Tensor(b)]]));
  const sum = outputs.get('sum');
  const bytes = sum.data();
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return { sum: Array.from(values), shape: Array.from(sum.dimensions()) };
}

function numbers(value) {
  if (!Array.isArray(value) || value.length !== 4 || !value.every(Number.isFinite)) {
    return null;
  }
  return value;
}

function f32Tensor(values) {
  const bytes = new Uint8Array(new Float32Array(values).buffer);
  return new Tensor([2, 2], 'FP32', bytes);
}

function badRequest(message) {
  return reply(400, { error: { code: 'bad_request', message } });
}

function reply(status, value) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { 'content-type': 'application/json' },
  });
}
