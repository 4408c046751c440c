#!/usr/bin/perl
# Score many messages with SpamAssassin's local rules in one process (loading the rules takes seconds, a
# message tens of milliseconds). Arguments: the .eml files. Prints one JSON object per file, in order:
# {"file", "score", "required", "tests": {"RULE": score}, "report"}. No network tests (local_tests_only).
use strict;
use warnings;
use Mail::SpamAssassin;
use JSON::PP;

my $home = $ENV{SPAMCHECK_HOME} || '/tmp';
my $sa = Mail::SpamAssassin->new({
    local_tests_only => 1,
    dont_copy_prefs => 1,
    userprefs_filename => '/dev/null',
    home_dir_for_helpers => $home,
    userstate_dir => $home,
    post_config_text => "use_bayes 0\nuse_auto_whitelist 0\nuse_pyzor 0\nuse_razor2 0\nskip_rbl_checks 1\n",
});
$sa->compile_now(0);
my $json = JSON::PP->new->canonical->utf8;
$| = 1;
for my $file (@ARGV) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    local $/;
    my $text = <$fh>;
    close $fh;
    my $mail = $sa->parse($text);
    my $status = $sa->check($mail);
    my %tests = %{ $status->get_names_of_tests_hit_with_scores_hash() };
    print $json->encode({
        file => $file, score => $status->get_score() + 0, required => $status->get_required_score() + 0,
        tests => \%tests, report => $status->get_report(),
    }), "\n";
    $status->finish();
    $mail->finish();
}
