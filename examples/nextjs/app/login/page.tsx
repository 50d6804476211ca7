import { logIn } from '../actions';

export default async function LoginPage({ searchParams }: {
  searchParams: Promise<{ error?: string }>;
}) {
  const { error } = await searchParams;
  return (
    <main>
      <h1>Sign in</h1>
      <p>
        <strong>Example only:</strong> this &quot;sign-in&quot; trusts the name you type. Replace it
        with your real authentication (see <code>lib/session.ts</code>).
      </p>
      {error && <p role="alert">A user id is 1–40 letters, digits or _.@:- characters.</p>}
      <form action={logIn}>
        <label>
          User id <input name="userId" required maxLength={40} autoFocus />
        </label>{' '}
        <button type="submit">Sign in</button>
      </form>
    </main>
  );
}
