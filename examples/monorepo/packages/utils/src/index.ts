/** Joins words into a sentence. */
export function sentence(words: string[]): string {
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1) + ".";
}

/** Sums numbers. */
export function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
