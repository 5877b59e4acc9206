import { describe, expect, it } from 'vitest';
import {
  POP3_MAX_COMMAND_OCTETS,
  continuation,
  encodeCommand,
  encodeUser,
  err,
  multiline,
  ok,
  sanitizeText,
} from '../../src/protocols/pop3/compiler.js';

describe('POP3 responses', () => {
  it('formats +OK with and without a response code', () => {
    expect(ok('Logged in')).toBe('+OK Logged in\r\n');
    expect(ok('Capability list follows')).toBe('+OK Capability list follows\r\n');
    expect(ok('Begin TLS negotiation', 'X-TLS')).toBe('+OK [X-TLS] Begin TLS negotiation\r\n');
    expect(ok('')).toBe('+OK\r\n');
  });

  it('formats -ERR with RFC 2449 / RFC 3206 codes', () => {
    expect(err('Authentication failed', 'AUTH')).toBe('-ERR [AUTH] Authentication failed\r\n');
    expect(err('Try again later', 'SYS/TEMP')).toBe('-ERR [SYS/TEMP] Try again later\r\n');
    expect(err('Mailbox locked', 'IN-USE')).toBe('-ERR [IN-USE] Mailbox locked\r\n');
    expect(err('Unknown command')).toBe('-ERR Unknown command\r\n');
    expect(err('', 'LOGIN-DELAY')).toBe('-ERR [LOGIN-DELAY]\r\n');
  });

  it('cannot be made to emit a second line through the text', () => {
    const out = err('bad\r\n+OK Logged in', 'AUTH');
    expect(out).toBe('-ERR [AUTH] bad+OK Logged in\r\n');
    expect(out.indexOf('\n')).toBe(out.length - 1);
    expect(ok('a\nb\rc\0d')).toBe('+OK abcd\r\n');
  });

  it('cannot be made to escape the response code brackets', () => {
    expect(err('x', 'AUTH] [SYS/PERM\r\n')).toBe('-ERR [AUTHSYS/PERM] x\r\n');
    expect(ok('x', '\r\n')).toBe('+OK x\r\n');
  });

  it('formats SASL continuations', () => {
    expect(continuation()).toBe('+ \r\n');
    expect(continuation('')).toBe('+ \r\n');
    expect(continuation('VXNlcm5hbWU6')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(() => continuation('not base64\r\n')).toThrow(TypeError);
  });

  it('byte-stuffs multi-line bodies and terminates them', () => {
    expect(multiline(['USER', 'SASL PLAIN LOGIN', '.hidden', '..two', 'STLS'])).toBe(
      'USER\r\nSASL PLAIN LOGIN\r\n..hidden\r\n...two\r\nSTLS\r\n.\r\n',
    );
    expect(multiline([])).toBe('.\r\n');
    expect(multiline(['.'])).toBe('..\r\n.\r\n');
  });

  it('sanitizes multi-line bodies so a line cannot end the list early', () => {
    expect(multiline(['A\r\n.\r\nB'])).toBe('A.B\r\n.\r\n');
  });
});

describe('sanitizeText', () => {
  it('removes CR, LF, NUL and every other control character', () => {
    expect(sanitizeText('a\r\nb')).toBe('ab');
    expect(sanitizeText('\0x\ty\u001bz\u007f\u0085')).toBe('xyz');
  });

  it('leaves printable and non-ASCII text alone', () => {
    expect(sanitizeText('Grüße, 👋 [ok] / 100%')).toBe('Grüße, 👋 [ok] / 100%');
  });
});

describe('encodeCommand (to the upstream)', () => {
  it('encodes commands with and without an argument', () => {
    expect(encodeCommand('CAPA')).toEqual(Buffer.from('CAPA\r\n'));
    expect(encodeCommand('stls')).toEqual(Buffer.from('STLS\r\n'));
    expect(encodeCommand('PASS', 'abcd efgh ijkl')).toEqual(Buffer.from('PASS abcd efgh ijkl\r\n'));
    expect(encodeCommand('PASS', '')).toEqual(Buffer.from('PASS \r\n'));
  });

  it('passes Buffer arguments byte for byte', () => {
    const password = Buffer.from([0xff, 0x20, 0xe9, 0x7f]);
    expect(encodeCommand('PASS', password)).toEqual(
      Buffer.concat([Buffer.from('PASS '), password, Buffer.from('\r\n')]),
    );
  });

  it.each([
    ['CR', 'pw\rSTAT'],
    ['LF', 'pw\nDELE 1'],
    ['CRLF', 'pw\r\nDELE 1'],
    ['NUL', 'pw\0'],
  ])('refuses an argument containing %s', (_name, arg) => {
    expect(encodeCommand('PASS', arg)).toEqual({ error: 'unsafe' });
    expect(encodeCommand('PASS', Buffer.from(arg))).toEqual({ error: 'unsafe' });
  });

  it('enforces the 255-octet command limit, CRLF included', () => {
    const fits = 'x'.repeat(POP3_MAX_COMMAND_OCTETS - 'PASS \r\n'.length);
    const encoded = encodeCommand('PASS', fits);
    expect(Buffer.isBuffer(encoded) && encoded.length).toBe(255);
    expect(encodeCommand('PASS', `${fits}x`)).toEqual({ error: 'unsafe' });
  });

  it('counts octets, not characters', () => {
    const chars = 'é'.repeat(125); // 250 octets
    expect(encodeCommand('PASS', chars)).toEqual({ error: 'unsafe' });
  });

  it('does not mention the argument in a refusal', () => {
    expect(JSON.stringify(encodeCommand('PASS', 'hunter2\r\n'))).not.toContain('hunter2');
  });

  it('throws on an invalid keyword (a programming error)', () => {
    expect(() => encodeCommand('PA SS')).toThrow(TypeError);
    expect(() => encodeCommand('')).toThrow(TypeError);
    expect(() => encodeCommand('CAPA\r\n')).toThrow(TypeError);
  });
});

describe('encodeUser', () => {
  it('encodes a plain user name', () => {
    expect(encodeUser('alice@example.org')).toEqual(Buffer.from('USER alice@example.org\r\n'));
  });

  it.each([
    ['space', 'alice smith'],
    ['tab', 'alice\tsmith'],
    ['CRLF', 'alice\r\nDELE 1'],
    ['NUL', 'alice\0'],
    ['empty', ''],
  ])('refuses a name with %s', (_name, user) => {
    expect(encodeUser(user)).toEqual({ error: 'unsafe' });
  });

  it('refuses an over-long name', () => {
    expect(encodeUser('a'.repeat(250))).toEqual({ error: 'unsafe' });
  });
});
