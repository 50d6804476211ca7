// Prints a token signed exactly like the app's endpoint does, with the real jsonwebtoken:
//   node test-support/sign-token.mjs --user-id 42 --secret "$WEBSOCKET_JWT_SECRET"
import jwt from 'jsonwebtoken';

const USAGE = 'usage: node test-support/sign-token.mjs --user-id <id> --secret <secret>';

function parse(argv) {
  const known = new Set(['--user-id', '--secret']);
  const values = {};
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    // A missing value must not be filled with the next flag (a token signed with the secret
    // "--user-id" would make the caller's test fail for the wrong reason).
    if (!known.has(name) || value === undefined || value.startsWith('--')) return null;
    values[name] = value;
  }
  return values['--user-id'] && values['--secret'] ? values : null;
}

const args = parse(process.argv.slice(2));
if (!args) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}
const token = jwt.sign({ userId: args['--user-id'] }, args['--secret'], {
  algorithm: 'HS256',
  issuer: 'papr-app',
  audience: 'papr-realtime',
  expiresIn: '1h',
});
process.stdout.write(`${token}\n`);
