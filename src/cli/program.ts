/**
 * The `netmangle` program around its subcommands: builds the commander program with the
 * register functions it is given and turns errors into one clear line and an exit code.
 * Shared by the unbundled entry (main.ts, which loads commands lazily) and the per-command
 * bundles (scripts/bundle.mjs), which import exactly the register functions they need.
 */
import { Command, CommanderError } from 'commander';
import { describeError, EXIT, exitCodeOf } from '../errors.js';
import { printable } from '../printable.js';
import type { RegisterCommand } from './commands/index.js';

/**
 * A reader that went away (`netmangle run … | head -1`) must not crash netmangle with a stack
 * trace, least of all while programs are attached: what is written after that is dropped, and
 * the command goes on to detach and exit as usual.
 */
function ignoreClosedOutput(stream: NodeJS.WriteStream): void {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
}

export async function runCli(registers: readonly RegisterCommand[], argv: readonly string[] = process.argv): Promise<void> {
  ignoreClosedOutput(process.stdout);
  ignoreClosedOutput(process.stderr);
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
      // Commander says 1 for an unknown option or a missing argument: for netmangle that is a
      // usage error (2); --help and --version stay 0.
      process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    } else {
      // Messages quote rule text, names and file names: shown escaped, never acted on by the terminal.
      process.stderr.write(`netmangle: ${printable(describeError(err), { multiline: true })}\n`);
      if (process.env.NETMANGLE_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
      process.exitCode = exitCodeOf(err);
    }
  }
}
