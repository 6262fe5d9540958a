// A refusal direction as the in-browser engine needs it (the vector, its layer and position):
// read from `direction.safetensors` as `refusal-lens directions` writes it, from a file or from
// a stored result of the server.

import { resultFileUrl } from './api.js';

/** Parses direction.safetensors: one 1-D f32 tensor `direction`, layer/position metadata. */
export function parseDirection(buffer, fileName = 'direction.safetensors') {
  const bytes = new Uint8Array(buffer);
  const fail = (why) => {
    throw new Error(`${fileName}: ${why}`);
  };
  if (bytes.length < 8) fail('too short for a safetensors file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.length - 8) fail(`the header claims ${headerLen} bytes, the file has ${bytes.length - 8}`);
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  } catch {
    fail('the header is not JSON');
  }
  const t = header.direction;
  if (!t) fail('no tensor named `direction` (is this a direction written by `refusal-lens directions`?)');
  if (t.dtype !== 'F32' || !Array.isArray(t.shape) || t.shape.length !== 1) {
    fail(`\`direction\` must be a 1-D F32 tensor, found ${t.dtype} ${JSON.stringify(t.shape)}`);
  }
  const [start, end] = t.data_offsets;
  const base = 8 + headerLen;
  if (!(end - start === t.shape[0] * 4 && base + end <= bytes.length)) fail('the tensor data lies outside the file');
  const vector = Array.from({ length: t.shape[0] }, (_, i) => view.getFloat32(base + start + 4 * i, true));
  const meta = header.__metadata__ || {};
  const layer = Number(meta.layer);
  const position = Number(meta.position);
  if (!Number.isInteger(layer) || !Number.isInteger(position)) fail('the metadata has no integer `layer` and `position`');
  return { vector, layer, position };
}

/** The direction of a stored directions result of this server. */
export async function fetchDirection(resultId) {
  const res = await fetch(resultFileUrl(resultId, 'direction.safetensors'));
  if (!res.ok) throw new Error(`direction of result ${resultId}: ${res.status} ${await res.text()}`);
  return parseDirection(await res.arrayBuffer());
}

/** direction.safetensors as `refusal-lens directions` writes it, for a direction found here. */
export function directionSafetensors({ vector, layer, position }) {
  let header = JSON.stringify({
    __metadata__: { layer: String(layer), position: String(position) },
    direction: { dtype: 'F32', shape: [vector.length], data_offsets: [0, vector.length * 4] },
  });
  header += ' '.repeat((8 - (header.length % 8)) % 8); // the data starts 8-byte aligned
  const head = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + head.length + vector.length * 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  vector.forEach((v, i) => view.setFloat32(8 + head.length + 4 * i, v, true));
  return out;
}
