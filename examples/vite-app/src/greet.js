export function greet(api) {
  return `Hello from Vite, talking to ${api}`;
}
