/**
 * Dovecot's master-user syntax in what a client typed.
 *
 * With `auth_master_user_separator = *`, Dovecot reads a plain login as
 * "alice*gwmaster" as "log in to alice, authenticated as the master user
 * gwmaster", and "alice*alice" as a plain login to alice. It does so whatever
 * mailgate's own `master_style` is. A name with the separator passed through
 * to the upstream would therefore reach alice's mailbox without alice's
 * two-step verification or block applying, or let a client guess the master
 * password. No client name may carry the separator; and such an attempt
 * counts against the account it names (the part before the separator), as
 * Dovecot would read it.
 */

export function hasMasterSyntax(name: string, separator: string): boolean {
  return separator.length > 0 && name.includes(separator);
}

/** The account an attempt is about: for "alice*anything", alice, as Dovecot reads it. */
export function accountOf(name: string, separator: string): string {
  const cut = separator.length > 0 ? name.indexOf(separator) : -1;
  return cut < 0 ? name : name.slice(0, cut);
}
