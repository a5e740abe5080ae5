/**
 * `netmangle serve`: the control service. Faults (named rule sets on an interface hook) are
 * created, changed and removed over HTTP + JSON; docs/service.md describes the API, and
 * GET /openapi.json gives it in full. Runs until SIGTERM/SIGINT, then detaches everything.
 */
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the control service: attach and remove faults over HTTP (unix socket, or loopback TCP with a token)')
    .option('--listen <address>', 'unix:PATH, or ADDRESS:PORT (TCP needs --token-file)', 'unix:/run/netmangle.sock')
    .option('--token-file <file>', 'TCP: the bearer token every request must carry (first line of the file, at least 16 characters)')
    .option('--listen-any', 'TCP: allow an address that is not loopback')
    .action(async (opts: { listen: string; tokenFile?: string; listenAny?: boolean }) => {
      const { parseListen } = await import('../../service/listen.js');
      const { serveUntilSignal } = await import('../../service/serve.js');
      await serveUntilSignal({
        address: parseListen(opts.listen),
        tokenFile: opts.tokenFile,
        listenAny: opts.listenAny,
        version: process.env.npm_package_version ?? '0.1.0',
      });
    });
}
