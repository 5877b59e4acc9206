import { describe, expect, it } from 'vitest';
import { RefusalTiming } from '../../src/auth/refusal-timing.js';

describe('RefusalTiming', () => {
  it('makes a local refusal wait as long as an upstream one took, and not the other way round', () => {
    const timing = new RefusalTiming(0, [], () => 0);
    expect(timing.settle('imap', 'local', 40)).toBe(0); // nothing to match yet
    expect(timing.settle('imap', 'upstream', 500)).toBe(0); // slower than any local refusal
    expect(timing.settle('imap', 'local', 40)).toBe(460);
  });

  it('pads a fast upstream refusal up to the local ones too', () => {
    const timing = new RefusalTiming(0, [], () => 0);
    timing.settle('pop3', 'local', 80);
    expect(timing.settle('pop3', 'upstream', 30)).toBe(50);
  });

  it('keeps protocols apart, and caps the wait', () => {
    const timing = new RefusalTiming(0, [], () => 0);
    timing.settle('imap', 'upstream', 60_000);
    expect(timing.settle('pop3', 'local', 10)).toBe(0);
    expect(timing.settle('imap', 'local', 10)).toBe(4990);
  });

  it('starts from the configured estimate of an upstream refusal, until real ones are measured', () => {
    const timing = new RefusalTiming(2000, ['imap'], () => 0);
    expect(timing.settle('imap', 'local', 40)).toBe(1960);
    expect(timing.settle('pop3', 'local', 40)).toBe(0);
  });

  it('draws from the recent samples only', () => {
    const timing = new RefusalTiming(0, [], () => 0.999);
    for (let i = 0; i < 40; i++) timing.settle('imap', 'upstream', i < 8 ? 5000 : 100);
    // Only the last 32 samples (all 100 ms) remain.
    expect(timing.settle('imap', 'local', 0)).toBe(100);
  });
});
