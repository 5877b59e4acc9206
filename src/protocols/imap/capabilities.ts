/**
 * The capability list mailgate offers before login (RFC 3501 6.1.1,
 * RFC 2595 for STARTTLS/LOGINDISABLED, RFC 4959 SASL-IR, RFC 7888 LITERAL+).
 *
 * Capabilities that describe the mailbox server itself (IDLE, IMAP4rev2,
 * ...) are taken from the upstream, so a client that reads them from the
 * greeting sees what it will get after login. Those that describe the
 * pre-login conversation are mailgate's own.
 */

/** What mailgate itself implements before login. */
export const OWN_CAPABILITIES = ['IMAP4rev1', 'SASL-IR', 'LITERAL+', 'ID', 'ENABLE'] as const;

/** Upstream capabilities that describe its own login phase, not the mailbox: never copied. */
function isLoginPhaseCapability(capability: string): boolean {
  const upper = capability.toUpperCase();
  return (
    upper === 'STARTTLS' ||
    upper === 'LOGINDISABLED' ||
    upper.startsWith('AUTH=') ||
    upper === 'SASL-IR' ||
    upper === 'LITERAL+' ||
    upper === 'LITERAL-' ||
    upper === 'LOGIN-REFERRALS' ||
    upper === 'ID' ||
    upper === 'ENABLE' ||
    upper === 'IMAP4REV1'
  );
}

export interface PreloginCapabilityOptions {
  /** The listener offers STARTTLS and the connection is not encrypted yet. */
  starttlsOffered: boolean;
  /** Credentials may be sent now (the connection is encrypted). */
  loginAllowed: boolean;
  /** The upstream's last known capabilities, or null when unknown. */
  upstream: readonly string[] | null;
  mechanisms: readonly string[];
}

export function preloginCapabilities(options: PreloginCapabilityOptions): string[] {
  const list: string[] = [...OWN_CAPABILITIES];
  for (const capability of options.upstream ?? []) {
    if (!isLoginPhaseCapability(capability) && !list.some((c) => c.toUpperCase() === capability.toUpperCase())) {
      list.push(capability);
    }
  }
  if (options.starttlsOffered) list.push('STARTTLS');
  if (options.loginAllowed) list.push(...options.mechanisms.map((m) => `AUTH=${m}`));
  else list.push('LOGINDISABLED');
  return list;
}
