// Prints a token signed exactly like the app's endpoint does, with the real jsonwebtoken:
//   node test-support/sign-token.mjs --user-id 42 --secret "$WEBSOCKET_JWT_SECRET"
import jwt from 'jsonwebtoken';

const args = process.argv.slice(2);
const value = (name) => args[args.indexOf(name) + 1];
const token = jwt.sign({ userId: value('--user-id') }, value('--secret'), {
  issuer: 'papr-app',
  audience: 'papr-realtime',
  expiresIn: '1h',
});
process.stdout.write(`${token}\n`);
