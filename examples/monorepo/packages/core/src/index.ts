import { sentence, sum } from "@example/utils";

export interface Order {
  item: string;
  price: number;
}

/** Describes an order list in one sentence. */
export function describe(orders: Order[]): string {
  const total = sum(orders.map((o) => o.price));
  return sentence([`${orders.length} orders`, "totalling", total.toFixed(2)]);
}
