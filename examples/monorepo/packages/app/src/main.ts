import { describe } from "@example/core";

const orders = [
  { item: "coffee", price: 3.5 },
  { item: "bagel", price: 2.25 },
];
console.log(describe(orders));
