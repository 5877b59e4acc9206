/**
 * `mailgate check`: a checklist of what a start and the first logins depend
 * on (configuration, certificate, store, master password, upstreams, the
 * master login with --account, the open-file limit), changing nothing. Exit
 * 0 only when every line is a ✓.
 */
import { Command } from 'commander';
import { ConfigError, type LoadedConfig } from '../../config/load.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
// Type only: the checks (TLS, upstream dialogues) are loaded when `check` runs.
import type { Finding } from '../../server/checks.js';
import { globalOptions, loadCommandConfig } from '../context.js';
import { printJson, printLine } from '../output.js';

export function checkCommand(): Command {
  return new Command('check')
    .description('check the configuration, certificate, store, upstreams and limits without changing anything (like nginx -t); exit 0 only when all pass')
    .option('--account <user>', 'also log in upstream as the master user for this account (default: upstream.login.probe_account), and out again')
    .option('--json', 'print JSON')
    .action(async (opts: { account?: string }, cmd: Command) => {
      const findings = await checklist(cmd, opts.account);
      const failed = findings.filter((f) => !f.ok);
      if (globalOptions(cmd).json) printJson({ ok: failed.length === 0, checks: findings.map((f) => ({ check: f.check, ok: f.ok, message: f.message, advice: f.advice ?? null })) });
      else for (const f of findings) printLine(f.ok ? `✓ ${f.message}` : `✗ ${f.message} — ${f.advice ?? 'see the line above'}`);
      if (failed.length > 0) throw new MailgateError(ErrorCodes.CHECK_FAILED, `${failed.length} of ${findings.length} checks failed`);
    });
}

/** The configuration first: when it does not load, nothing else can be checked. */
async function checklist(cmd: Command, account: string | undefined): Promise<Finding[]> {
  let loaded: LoadedConfig;
  try {
    loaded = loadCommandConfig(cmd);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return [{ check: 'config', ok: false, message: err.message, advice: 'fix the key named (docs/configuration.md lists every key)' }];
  }
  const config: Finding = { check: 'config', ok: true, message: `configuration ${loaded.file ?? '(built-in defaults: no file)'} is valid` };
  const { runChecks } = await import('../../server/checks.js');
  return [config, ...(await runChecks(loaded.config, { env: process.env, ...(account ? { account } : {}) }))];
}
