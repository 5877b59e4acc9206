import { describe, expect, it } from 'vitest';
import { canonicalAddress, clientKey } from '../../src/auth/client-key.js';

describe('clientKey', () => {
  it('keeps IPv4 addresses, and unwraps IPv4-mapped IPv6', () => {
    expect(clientKey('192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
  });

  it('counts an IPv6 /64 as one client, however the address is written', () => {
    const key = clientKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd');
    expect(key).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:0db8:0001:0002::1')).toBe(key);
    expect(clientKey('2001:db8:1:2:ffff::')).toBe(key);
    expect(clientKey('2001:db8:1:3::1')).not.toBe(key);
  });

  it('handles compressed forms at either end', () => {
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });

  it('gives every address one spelling (RFC 5952, IPv4-mapped as IPv4)', () => {
    expect(canonicalAddress('::FFFF:10.1.2.3')).toBe('10.1.2.3');
    expect(canonicalAddress('::ffff:a01:203')).toBe('10.1.2.3');
    expect(canonicalAddress('FE80:0:0:0:0:0:0:1')).toBe('fe80::1');
    expect(canonicalAddress('2001:0DB8:0001:0002:0000:0000:0000:00A1')).toBe('2001:db8:1:2::a1');
    expect(canonicalAddress('::1')).toBe('::1');
    expect(canonicalAddress('192.0.2.1')).toBe('192.0.2.1');
    expect(canonicalAddress('fe80::1%eth0')).toBe('fe80::1%eth0');
    expect(canonicalAddress('unknown')).toBe('unknown');
  });
});
