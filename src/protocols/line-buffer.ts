/**
 * Byte accumulator shared by the IMAP and POP3 parsers.
 *
 * It knows about lines and byte counts, nothing about commands. Chunks are kept
 * as received and only joined when a caller asks for bytes, so a client that
 * trickles one byte at a time costs no quadratic copying.
 */

export type LineResult =
  | { kind: 'line'; line: Buffer } // without the CRLF (or bare LF)
  | { kind: 'need-more' }
  | { kind: 'too-long' };

export class LineBuffer {
  private chunks: Buffer[] = [];
  private length = 0;
  // Where the search for LF stopped last time (chunk index, and the absolute
  // offset of that chunk), so a line trickled in byte by byte is scanned once
  // in total rather than once per byte.
  private scanChunk = 0;
  private scanChunkStart = 0;

  get bufferedBytes(): number {
    return this.length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * Remove and return the next line. A line ends at LF; a CR before it is
   * dropped too. `maxBytes` bounds the line without its terminator: past it,
   * `too-long` is answered as soon as it is certain, without waiting for LF.
   */
  readLine(maxBytes: number): LineResult {
    const lf = this.indexOfLf();
    if (lf < 0) {
      // Without a terminator we can still tell when the line is already too long
      // (allowing one byte for a CR that may precede the coming LF).
      return this.length > maxBytes + 1 ? { kind: 'too-long' } : { kind: 'need-more' };
    }
    const end = lf > 0 && this.byteAt(lf - 1) === 0x0d ? lf - 1 : lf;
    if (end > maxBytes) return { kind: 'too-long' };
    const all = this.take(lf + 1);
    return { kind: 'line', line: all.subarray(0, end) };
  }

  /** Remove and return exactly `n` bytes, or null when fewer are buffered. */
  readBytes(n: number): Buffer | null {
    if (this.length < n) return null;
    return this.take(n);
  }

  /** Drop everything buffered and return how many bytes were dropped. */
  discard(): number {
    const n = this.length;
    this.chunks = [];
    this.length = 0;
    this.resetScan();
    return n;
  }

  /** Remove and return everything buffered (for a hand-over to the relay). */
  takeAll(): Buffer {
    return this.take(this.length);
  }

  /** Removes the first `n` bytes, joining only the chunks they span. */
  private take(n: number): Buffer {
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const chunk = this.chunks[0]!;
      if (chunk.length <= need) {
        parts.push(chunk);
        this.chunks.shift();
        need -= chunk.length;
      } else {
        parts.push(chunk.subarray(0, need));
        this.chunks[0] = chunk.subarray(need);
        need = 0;
      }
    }
    this.length -= n;
    this.resetScan();
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  private resetScan(): void {
    this.scanChunk = 0;
    this.scanChunkStart = 0;
  }

  private indexOfLf(): number {
    // Chunks before scanChunk are known to hold no LF; only appended ones are new.
    while (this.scanChunk < this.chunks.length) {
      const chunk = this.chunks[this.scanChunk]!;
      const i = chunk.indexOf(0x0a);
      if (i >= 0) return this.scanChunkStart + i;
      this.scanChunkStart += chunk.length;
      this.scanChunk += 1;
    }
    return -1;
  }

  private byteAt(index: number): number {
    let offset = 0;
    for (const chunk of this.chunks) {
      if (index < offset + chunk.length) return chunk[index - offset]!;
      offset += chunk.length;
    }
    return -1;
  }
}
