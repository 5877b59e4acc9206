/** Inputs for the unit tests of the authentication policy. */
import type { AuthAttempt } from '../../src/auth/policy.js';

/** A login attempt from 192.0.2.1, by a client that sent no ID. */
export function loginAttempt(username: string, password: string, protocol: 'imap' | 'pop3' = 'imap'): AuthAttempt {
  return { username, password: Buffer.from(password), protocol, clientIp: '192.0.2.1', client: null };
}
