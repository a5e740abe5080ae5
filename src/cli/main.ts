/**
 * The `netmangle` command line. Each subcommand lives in its own module under
 * src/cli/commands/ and registers itself on the program; this file only wires them and
 * turns errors into one clear line and an exit code.
 */
import { Command, CommanderError } from 'commander';
import { describeError, NetmangleError } from '../errors.js';
import { commandsFor } from './commands/index.js';

const program = new Command('netmangle')
  .description('Reproduce network misbehaviour on demand with eBPF')
  .version(process.env.npm_package_version ?? '0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .enablePositionalOptions()
  .exitOverride();

for (const register of await commandsFor(process.argv.slice(2))) register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else {
    process.stderr.write(`netmangle: ${describeError(err)}\n`);
    if (process.env.NETMANGLE_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exitCode = err instanceof NetmangleError ? err.exitCode : 70;
  }
}
