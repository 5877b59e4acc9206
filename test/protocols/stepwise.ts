/**
 * Split feeding for parser tests whose scenario acts between feeds (the
 * session refuses a literal, discards the buffer, checks what is buffered):
 * those actions need fixed feed boundaries, but the bytes of each feed must
 * still be cut at every position. Every split of every part is tried with the
 * other parts fed whole; trying every combination would be quadratic in runs
 * and add nothing, since the parsers only carry state across a boundary.
 */
import { isDeepStrictEqual } from 'node:util';
import { expect } from 'vitest';
import { feedSplits } from '../support/feed.js';

/**
 * Runs `run` with each part whole, then once per split (whole, every
 * two-chunk split, bytewise) of each part in turn; every result must equal
 * the all-whole one, which is returned for the caller to check.
 */
export function eachPartSplit<T>(parts: Array<string | Buffer>, run: (parts: Buffer[][]) => T): T {
  const whole = parts.map((p) => [Buffer.from(p)]);
  const expected = run(whole);
  parts.forEach((part, i) => {
    for (const { label, result } of feedSplits(part, (chunks) => run(whole.map((w, j) => (j === i ? chunks : w))))) {
      // toEqual walks Buffers byte by byte; only use it to explain a mismatch.
      if (!isDeepStrictEqual(result, expected)) expect(result, `part ${i} ${label}`).toEqual(expected);
    }
  });
  return expected;
}
