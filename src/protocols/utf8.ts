/** Strict UTF-8 for names clients send: invalid bytes are an error, never replaced. */

// ignoreBOM keeps a leading U+FEFF instead of silently dropping it, so
// "\uFEFFalice" cannot turn into "alice" on the way to the store.
const STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The text, or null when the bytes are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return STRICT.decode(bytes);
  } catch {
    return null;
  }
}
