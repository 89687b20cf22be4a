; example.com: the customer's own zone, served by the file plugin.
;
; The apex has SOA, NS, MX and TXT but deliberately NO A or AAAA records:
; those are synthesized by flatten from client1.agency.example (see Corefile).
; Everything else here is answered by the file plugin unchanged.
$ORIGIN example.com.
$TTL 3600
@       IN SOA  ns1.example.com. hostmaster.example.com. (
                2024010101 ; serial
                7200       ; refresh
                3600       ; retry
                1209600    ; expire
                300 )      ; minimum (negative-caching TTL)
        IN NS   ns1.example.com.
        IN MX   10 mail.example.com.
        IN TXT  "v=spf1 -all"

ns1     IN A    192.0.2.53
mail    IN A    192.0.2.25
www     IN CNAME example.com.
