/**
 * The `netmangle` program around its subcommands: builds the commander program with the
 * register functions it is given and turns errors into one clear line and an exit code.
 * Shared by the unbundled entry (main.ts, which loads commands lazily) and the per-command
 * bundles (scripts/bundle.mjs), which import exactly the register functions they need.
 */
import { Command, CommanderError } from 'commander';
import { describeError, NetmangleError } from '../errors.js';
import type { RegisterCommand } from './commands/index.js';

export async function runCli(registers: readonly RegisterCommand[], argv: readonly string[] = process.argv): Promise<void> {
  const program = new Command('netmangle')
    .description('Reproduce network misbehaviour on demand with eBPF')
    .version(process.env.npm_package_version ?? '0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .enablePositionalOptions()
    .exitOverride();

  for (const register of registers) register(program);

  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
    } else {
      process.stderr.write(`netmangle: ${describeError(err)}\n`);
      if (process.env.NETMANGLE_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
      process.exitCode = err instanceof NetmangleError ? err.exitCode : 70;
    }
  }
}
