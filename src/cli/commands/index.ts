/**
 * Every subcommand, in the order `netmangle --help` lists them. Each is loaded only when it is
 * the one being run (or for the full help), so a command's start-up never pays for another's
 * modules (the lab's schemas, koffi, the VM).
 */
import type { Command } from 'commander';

export type RegisterCommand = (program: Command) => void;

/**
 * Command name to the module (next to this file) that registers it. scripts/bundle.mjs reads
 * this table to build one bundle per module, and bin/netmangle picks the bundle by the same rule
 * as commandsFor.
 */
export const commandFiles: Record<string, string> = {
  probe: 'probe.js',
  demo: 'demo.js',
  run: 'run.js',
  status: 'status.js',
  clear: 'status.js',
  replay: 'replay.js',
  build: 'build.js',
  load: 'load.js',
  lab: 'lab.js',
  guardian: 'guardian.js',
  serve: 'serve.js',
  fields: 'fields.js',
};

export const commandModules: Record<string, () => Promise<{ register: RegisterCommand }>> = Object.fromEntries(
  Object.entries(commandFiles).map(([name, file]) => [name, () => import(`./${file}`) as Promise<{ register: RegisterCommand }>]),
);

/** The register functions needed for `argv`: just the named command's, or all of them. */
export async function commandsFor(argv: readonly string[]): Promise<RegisterCommand[]> {
  const name = argv.find((a) => !a.startsWith('-'));
  const loaders = name !== undefined && name in commandModules && name !== 'help'
    ? [commandModules[name]!]
    : [...new Set(Object.values(commandModules))];
  const mods = await Promise.all(loaders.map((load) => load()));
  return [...new Set(mods.map((m) => m.register))];
}
