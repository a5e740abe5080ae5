/**
 * The `netmangle` command line, unbundled: each subcommand lives in its own module under
 * src/cli/commands/ and is loaded only when it is the one being run. bin/netmangle runs the
 * per-command bundle of scripts/bundle.mjs instead when one is built and up to date with dist/,
 * and this file when not.
 */
import { commandsFor } from './commands/index.js';
import { runCli } from './program.js';

await runCli(await commandsFor(process.argv.slice(2)));
