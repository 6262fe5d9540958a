// Share links that need no server: a result (request, report, plot data) as compressed JSON in
// the URL fragment, `#/s/<base64url(deflate-raw(JSON))>`. The fragment never reaches the host,
// so a static host can share results too, and opening the link recomputes nothing.

const PREFIX = '#/s/';
const VERSION = 1;

async function pipe(bytes, stream) {
  return new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(stream)).arrayBuffer());
}

function toBase64Url(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64Url(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const s = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** `{kind, request, report}` as a fragment link to this page. */
export async function fragmentLink(result) {
  const json = new TextEncoder().encode(JSON.stringify({ v: VERSION, ...result }));
  const packed = toBase64Url(await pipe(json, new CompressionStream('deflate-raw')));
  return `${location.origin}${location.pathname}${PREFIX}${packed}`;
}

/** The packed part of a fragment link's hash, or null when the hash is not one. */
export function fragmentOf(hash) {
  return hash.startsWith(PREFIX) ? hash.slice(PREFIX.length) : null;
}

/** The result a fragment link carries. Throws a readable error for a damaged link. */
export async function readFragment(packed) {
  let json;
  try {
    json = new TextDecoder().decode(await pipe(fromBase64Url(packed), new DecompressionStream('deflate-raw')));
  } catch {
    throw new Error('this link is damaged (it may have been cut short when it was copied)');
  }
  const result = JSON.parse(json);
  if (result.v !== VERSION) throw new Error(`this link was made by another version of Refusal Lens (format ${result.v})`);
  return result;
}
