/**
 * The logger's two formats: JSON lines with level names (what fail2ban,
 * jq and the docs read), and pino-pretty's readable lines, with the same
 * redaction of secrets in both.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, resolveLogFormat, type LogFormat } from '../../src/log/logger.js';

function capture(format: LogFormat): { log: ReturnType<typeof createLogger>; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(String(chunk));
      done();
    },
  });
  // pino writes JSON to any object with write(); pino-pretty wants a stream.
  const log = createLogger({ level: 'debug', format, destination: format === 'json' ? { write: (line: string) => void chunks.push(line) } : sink });
  return { log, text: () => chunks.join('') };
}

describe('createLogger', () => {
  it('JSON: every level by name, not number', () => {
    // Catches: pino's default numeric levels ("level":30), which people cannot read at a glance.
    const { log, text } = capture('json');
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    log.fatal('f');
    const lines = text().trimEnd().split('\n').map((l) => JSON.parse(l) as { level: unknown; msg: string });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([['debug', 'd'], ['info', 'i'], ['warn', 'w'], ['error', 'e'], ['fatal', 'f']]);
  });

  it('pretty: one line per event with the level name, the message and the fields, secrets redacted', () => {
    // Catches: the readable format bypassing redaction, or spreading an event (an error) over lines.
    const { log, text } = capture('pretty');
    log.warn({ user: 'alice', password: 'hunter2', nested: { secret: 'JBSWY3DP' } }, 'something to see');
    log.error({ err: new Error('the disk is full') }, 'could not record the login');
    const lines = text().trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}\] WARN: something to see \{"user":"alice","password":"\[redacted\]","nested":\{"secret":"\[redacted\]"\}\}$/);
    expect(lines[1]).toMatch(/\] ERROR: could not record the login: the disk is full$/);
    expect(text()).not.toMatch(/hunter2|JBSWY3DP/);
  });

  it('auto is pretty at a terminal and JSON anywhere else', () => {
    expect(resolveLogFormat('auto', true)).toBe('pretty');
    expect(resolveLogFormat('auto', false)).toBe('json');
    expect(resolveLogFormat('json', true)).toBe('json');
    expect(resolveLogFormat('pretty', false)).toBe('pretty');
  });
});
