/**
 * What the page tells users: its own address (the failed-login hint links
 * there), and the mail-program settings shown with a new app password, from
 * the listeners as they are bound.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { helpUrl, webPageUrl } from '../../src/config/schema.js';
import { mailServers } from '../../src/web/server.js';

const listeners = (config: ReturnType<typeof parseConfig>, ports: number[]) => config.listen.map((l, i) => ({ config: l, port: ports[i]! }));

describe('the page address', () => {
  it('is public_url when set, else derived from listen (a wildcard host becomes the machine name)', () => {
    expect(webPageUrl(parseConfig({}, 't'))).toBe('https://127.0.0.1:8443/');
    expect(webPageUrl(parseConfig({ web: { listen: '0.0.0.0:443' } }, 't'), () => 'mx1.example.com')).toBe('https://mx1.example.com:443/');
    expect(webPageUrl(parseConfig({ web: { listen: '[::]:8443', tls: false } }, 't'), () => 'mx1')).toBe('http://mx1:8443/');
    expect(webPageUrl(parseConfig({ web: { public_url: 'https://mail.example.com/account' } }, 't'))).toBe('https://mail.example.com/account/');
    expect(webPageUrl(parseConfig({ web: { listen: '', public_url: 'https://mail.example.com/' } }, 't'))).toBeNull();
  });

  it('is the failed-login link unless policy.help_url says otherwise; with the page off and no help_url, no link', () => {
    expect(helpUrl(parseConfig({}, 't'))).toBe('https://127.0.0.1:8443/');
    expect(helpUrl(parseConfig({ policy: { help_url: 'https://help.example.com/' } }, 't'))).toBe('https://help.example.com/');
    expect(helpUrl(parseConfig({ web: { listen: '' } }, 't'))).toBe('');
  });
});

describe('mail-program settings', () => {
  it('per protocol the implicit-TLS listener, with its bound port, under the name users know', () => {
    const config = parseConfig(
      {
        web: { public_url: 'https://mail.example.com/account/' },
        listen: [
          { protocol: 'imap', host: '0.0.0.0', port: 143, tls: 'starttls' },
          { protocol: 'imap', host: '0.0.0.0', port: 993, tls: 'implicit' },
          { protocol: 'pop3', host: '0.0.0.0', port: 110, tls: 'starttls' },
        ],
      },
      't',
    );
    expect(mailServers(config, listeners(config, [143, 993, 110]))).toEqual([
      { protocol: 'IMAP', host: 'mail.example.com', port: 993, security: 'SSL/TLS' },
      { protocol: 'POP3', host: 'mail.example.com', port: 110, security: 'STARTTLS' },
    ]);
  });

  it('the listener host itself when the page has no other name for it, and only the protocols that listen', () => {
    const config = parseConfig({ listen: [{ protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit' }] }, 't');
    expect(mailServers(config, listeners(config, [40993]))).toEqual([{ protocol: 'IMAP', host: '127.0.0.1', port: 40993, security: 'SSL/TLS' }]);
  });
});
