// npm run relay-client — packs relay's client (../../client) into vendor/relay-client.tgz,
// the file package.json installs @relay/client from until the package is on a registry.
// A tarball, not a `file:../../client` link: a link would resolve React from the client's
// own node_modules (its test dependency) and the page would run two Reacts.
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const vendor = join(root, 'vendor');
mkdirSync(vendor, { recursive: true });
const out = execFileSync('npm', ['pack', '--json', '--pack-destination', vendor],
  { cwd: join(root, '..', '..', 'client'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
// The client's prepack check prints its verdict first; npm's JSON follows.
const [packed] = JSON.parse(out.slice(out.indexOf('[')));
renameSync(join(vendor, packed.filename), join(vendor, 'relay-client.tgz'));
console.log(`vendor/relay-client.tgz: ${packed.name}@${packed.version}, ${packed.size} bytes`);
