import { greet } from "./greet.js";

document.querySelector("#app").textContent = greet(import.meta.env.VITE_API_URL ?? "no API");
