// The prepack check (`npm pack` and `npm publish` run it after the typecheck): the files that
// package.json publishes are enough for both entry points. It copies exactly those files into
// a scratch project's node_modules/@relay/client, with React beside it as the app's peer,
// and imports '@relay/client' and '@relay/client/react' from there.
// (make test goes further: tests/test_client_package.py installs the real tarball.)
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const problems = [];

if (pkg.private) problems.push('package.json says "private": npm would refuse to publish it');
const published = (path) => {
  const file = normalize(path);
  return pkg.files.some((entry) => file === normalize(entry) || file.startsWith(`${normalize(entry)}/`));
};
for (const [entry, conditions] of Object.entries(pkg.exports)) {
  const targets = typeof conditions === 'string' ? [conditions] : Object.values(conditions);
  for (const target of targets) {
    if (!existsSync(join(root, target))) problems.push(`exports["${entry}"] → ${target}: no such file`);
    else if (!published(target) && target !== './package.json') {
      problems.push(`exports["${entry}"] → ${target} is not in "files"`);
    }
  }
}
if (problems.length) {
  process.stderr.write(`check-package: ${problems.join('\n  ')}\n`);
  process.exit(1);
}

const scratch = mkdtempSync(join(tmpdir(), 'relay-client-pack-'));
try {
  const installed = join(scratch, 'node_modules', '@relay', 'client');
  mkdirSync(installed, { recursive: true });
  for (const file of ['package.json', ...pkg.files]) cpSync(join(root, file), join(installed, file), { recursive: true });
  symlinkSync(join(root, 'node_modules', 'react'), join(scratch, 'node_modules', 'react'), 'dir');
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  writeFileSync(join(scratch, 'check.mjs'), `
    const client = await import('@relay/client');
    const react = await import('@relay/client/react');
    for (const [name, value] of [['createRealtimeClient', client.createRealtimeClient],
      ['useWebSocketUpdates', react.useWebSocketUpdates]]) {
      if (typeof value !== 'function') throw new Error(name + ' is not exported');
    }
  `);
  const run = spawnSync(process.execPath, ['check.mjs'], { cwd: scratch, encoding: 'utf8' });
  if (run.status !== 0) {
    process.stderr.write(`check-package: the published files do not import:\n${run.stderr}`);
    process.exit(1);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
process.stdout.write('check-package: both entry points import from the published files\n');
